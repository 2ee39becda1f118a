"""Quantize stage: weight-only int4/int8 (MatMulNBits) today; calibrated methods and activation QDQ plug in here."""

"""phiexport: Hugging Face causal LMs → verified on-device ONNX packages.

The pipeline runs one way: source → export → quantize → targets → evaluate → package (see pipeline.py).
"""

__version__ = "0.1.0"

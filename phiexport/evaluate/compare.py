"""`phiexport eval`: packages side by side against one reference, on the same token streams and GSM8K problems.

Each row of the report card is a package on one device: CPU packages (and DirectML ones, as a proxy) on the
onnxruntime CPU EP, NPU packages on the CPU EP and on the HTP simulator. Every scored item is journaled under
`<output>/raw/` as soon as it is scored, so an interrupted evaluation resumes where it stopped and a larger one
reuses what a smaller one measured; models are only loaded if something is left to compute.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from phiexport.digest import describe_files
from phiexport.errors import UsageError
from phiexport.evaluate.data import ScoredSequence, chat_prompt, prompt_tokenizer, scored_sequences
from phiexport.evaluate.gates import check_gates, gates_report
from phiexport.evaluate.gsm8k import Answers, final_answer, gold_answer, select_problems
from phiexport.evaluate.journal import Journal, digest, item_key
from phiexport.evaluate.metrics import TokenScores, first_divergence, score_tokens
from phiexport.evaluate.onnx_runner import PackageRunner
from phiexport.evaluate.reference import Reference, open_reference, reference_device
from phiexport.package.manifest import package_dirs, read_manifest
from phiexport.progress import Track
from phiexport.recipe import EvaluationConfig, GatesConfig
from phiexport.runtime.genai import GenaiPipelineRunner, package_stop_ids, padded_length
from phiexport.source import Checkpoint

EVAL_SCHEMA = "phiexport.eval/1"
NPU_DEVICES = ("cpu", "htp-sim")


@dataclass(frozen=True)
class Subject:
    """One row of the report card: a package on one device."""

    label: str
    package_dir: Path
    target: str
    device: str  # NPU packages: a runtime.genai device; other packages always run on the CPU EP
    precision: str
    method: str
    context: int | None  # the fixed KV cache of an NPU package
    chunk: int  # tokens per prompt step: og pads an NPU package's prompt to whole chunks (1: no padding)
    contents: str  # digest of every file's sha256: a copy with one byte changed is another package

    @property
    def runs_on(self) -> str:
        if self.context is not None:
            return "HTP simulator" if self.device == "htp-sim" else "CPU EP"
        return "CPU EP" if self.target == "cpu" else f"CPU EP (proxy for {self.target})"

    def journal_name(self, reference_key: str) -> str:
        return f"{self.target}-{self.precision}-{self.device}-{digest(self.contents, self.device, reference_key)}.jsonl"

    def open(self) -> Any:
        if self.context is not None:
            return GenaiPipelineRunner(self.package_dir, device=self.device)
        return PackageRunner(self.package_dir)


def find_subjects(paths: Sequence[Path], npu_devices: Sequence[str]) -> list[Subject]:
    """The rows for `paths`: package folders, or build outputs whose sub-folders are packages."""
    subjects: list[Subject] = []
    for package_dir in package_dirs(paths):
        contents = digest(describe_files(package_dir))
        manifest = read_manifest(package_dir)
        target = manifest["target"]["name"]
        quant = manifest["recipe"]["quantization"]
        npu = manifest["recipe"]["npu"]
        static = target == "npu"
        for device in npu_devices if static else ("cpu",):
            label = f"{target}-{quant['precision']}" + (f"@{device}" if static else "")
            subjects.append(
                Subject(
                    label=label,
                    package_dir=package_dir,
                    target=target,
                    device=device,
                    precision=quant["precision"],
                    method=quant["method"] if quant["precision"] != "fp32" else "none",
                    context=npu["context_length"] if static else None,
                    chunk=npu["chunk"] if static else 1,
                    contents=contents,
                )
            )
    return _unique_labels(subjects)


def _unique_labels(subjects: list[Subject]) -> list[Subject]:
    """Two packages of the same kind are told apart by their build folder, e.g. `cpu-int4 (gptq-b128)`."""
    labels = [s.label for s in subjects]
    renamed = []
    for subject in subjects:
        if labels.count(subject.label) > 1:
            subject = replace(subject, label=f"{subject.label} ({subject.package_dir.parent.name})")
        renamed.append(subject)
    if len({s.label for s in renamed}) != len(renamed):
        raise UsageError("the same package is listed twice", "pass each package once")
    return renamed


def measured_metrics(evaluation: EvaluationConfig) -> set[str]:
    """What `evaluate_packages` measures with these settings (the gates may only limit these)."""
    metrics = {"kl_mean", "top1_agreement", "ppl_ratio"}
    return metrics | {"answer_agreement"} if evaluation.problems else metrics


class _Models:
    """The reference and the packages, each opened the first time something is left for it to compute."""

    def __init__(self, reference: Checkpoint, trust_remote_code: bool, device: Any):
        self._reference_checkpoint = reference
        self._trust_remote_code = trust_remote_code
        self._device = device
        self._reference: Reference | None = None
        self._runners: dict[str, Any] = {}

    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = open_reference(
                self._reference_checkpoint.path, trust_remote_code=self._trust_remote_code, device=self._device
            )
        return self._reference

    def runner(self, subject: Subject) -> Any:
        if subject.label not in self._runners:
            self._runners[subject.label] = subject.open()
        return self._runners[subject.label]


@dataclass
class Evaluation:
    """What `evaluate_packages` measured: the report and the per-token KL of each row (for the histogram)."""

    report: dict[str, Any]
    token_kl: dict[str, np.ndarray]

    @property
    def failed_gates(self) -> list[str]:
        return [line for row in self.report["packages"] for line in row["gates"]["failed"]]


def evaluate_packages(
    reference: Checkpoint,
    subjects: list[Subject],
    evaluation: EvaluationConfig,
    gates: GatesConfig,
    raw_dir: Path,
    *,
    trust_remote_code: bool,
    track: Track[Any],
    chat_template: str | None = None,
    device: Any = None,
) -> Evaluation:
    """Score every subject against `reference` (teacher-forced metrics, then GSM8K answers) and check its gates.
    `chat_template` (the recipe's chat format) formats prompts when the reference's tokenizer has none; the
    reference runs on torch `device` (default: the CPU)."""
    tokenizer = prompt_tokenizer(reference.path, trust_remote_code=trust_remote_code, chat_template=chat_template)
    contexts = [s.context for s in subjects if s.context is not None]
    max_tokens = min([evaluation.max_tokens, *contexts])  # every row scores the same streams: cut to the smallest cache
    sequences = scored_sequences(tokenizer, evaluation.sequences, max_tokens)
    if not sequences:
        raise UsageError("no evaluation sequence survived tokenization", "raise --max-tokens")

    problems = select_problems(evaluation.problems, evaluation.problem_seed)
    prompts = [
        tokenizer(chat_prompt(tokenizer, problem["question"]), add_special_tokens=False)["input_ids"]
        for problem in problems
    ]
    budget = _answer_budget(prompts, evaluation.answer_tokens, [(s.context, s.chunk) for s in subjects if s.context])

    reference_key = digest(reference.files, reference.origin, reference.revision)
    stop_ids = sorted(package_stop_ids(subjects[0].package_dir))
    by_path: dict[Path, Journal] = {}  # rows with identical contents share one journal object, never two
    journals = {}
    for subject in subjects:
        path = raw_dir / subject.journal_name(reference_key)
        journals[subject.label] = by_path.setdefault(path, Journal(path))
    reference_journal = Journal(raw_dir / f"reference-{digest(reference_key, stop_ids)}.jsonl")
    models = _Models(reference, trust_remote_code, device)

    sequence_keys = _score_sequences(sequences, subjects, journals, models, track)
    answer_keys = [item_key("answer", prompt, budget) for prompt in prompts]
    # the simulator decodes ~5 s per token: its rows answer only the first `simulator_problems`
    answered = {
        s.label: min(len(problems), evaluation.simulator_problems if s.device == "htp-sim" else len(problems))
        for s in subjects
    }
    if problems:
        _answer_problems(
            prompts, answer_keys, budget, set(stop_ids), subjects, answered, journals, reference_journal, models, track
        )

    gold = [gold_answer(problem) for problem in problems]
    questions = [problem["question"] for problem in problems]
    reference_answers = _answers(reference_journal, answer_keys, tokenizer)
    rows: list[dict[str, Any]] = []
    token_kl: dict[str, np.ndarray] = {}
    for subject in subjects:
        journal = journals[subject.label]
        scores = TokenScores()
        for key in sequence_keys:
            record = journal[key]
            scores.add_tokens(record["kl"], record["agree"], record["ref_nll"], record["pkg_nll"])
        metrics = {**scores.summary(), "seconds": round(sum(journal[k]["seconds"] for k in sequence_keys), 1)}
        token_kl[subject.label] = scores.token_kl()
        count = answered[subject.label]
        task = _task_metrics(
            journal,
            reference_journal,
            answer_keys[:count],
            tokenizer,
            questions[:count],
            gold[:count],
            _answers(reference_journal, answer_keys[:count], tokenizer),
        )
        row_gates = gates if task else gates.model_copy(update={"min_answer_agreement": None})
        failures = check_gates({**metrics, **task}, row_gates, subject.label)
        rows.append(
            {
                "label": subject.label,
                "path": str(subject.package_dir.absolute()),
                "target": subject.target,
                "runs_on": subject.runs_on,
                "precision": subject.precision,
                "method": subject.method,
                "bytes": _package_bytes(subject.package_dir),
                "metrics": metrics,
                "task": task,
                "gates": gates_report(row_gates, failures),
            }
        )
    report = {
        "schema": EVAL_SCHEMA,
        "reference": {
            "model": reference.origin,
            "revision": reference.revision,
            "runs_on": f"torch fp32 (transformers), {reference_device(device)}",
            "task": _reference_task(reference_answers, reference_journal, answer_keys, gold),
        },
        "data": {
            "sequences": len(sequences),
            "max_tokens": max_tokens,
            "tokens": int(next(iter(token_kl.values())).size),
            "problems": len(problems),
            "problem_seed": evaluation.problem_seed,
            "answer_tokens": budget,
            "chat_template": bool(tokenizer.chat_template),
        },
        "gates": {gate: limit for gate, limit in gates.model_dump().items() if limit is not None},
        "packages": rows,
        "passed": all(row["gates"]["passed"] for row in rows),
    }
    return Evaluation(report, token_kl)


def _score_sequences(
    sequences: list[ScoredSequence],
    subjects: list[Subject],
    journals: dict[str, Journal],
    models: _Models,
    track: Track[Any],
) -> list[str]:
    """Teacher-forced logits of each subject against the reference's, journaled per sequence; returns the keys."""
    keys = [item_key("sequence", s.token_ids, s.score_from) for s in sequences]
    todo = [(s, k) for s, k in zip(sequences, keys, strict=True) if any(k not in journals[x.label] for x in subjects)]
    reference_logits = models.reference().scored_logits([sequence for sequence, _ in todo]) if todo else iter(())
    scored = zip(todo, reference_logits, strict=True)
    for (sequence, key), ref_logits in track(scored, len(todo), f"teacher-forced scoring, {len(subjects)} packages"):
        targets = np.asarray(sequence.token_ids[sequence.score_from :])
        for subject in subjects:
            if key in journals[subject.label]:
                continue
            started = time.perf_counter()
            pkg_logits = models.runner(subject).logits(sequence.token_ids)[sequence.scored_positions]
            seconds = time.perf_counter() - started
            journals[subject.label].record(key, seconds=seconds, **score_tokens(ref_logits, pkg_logits, targets))
    return keys


def _answer_budget(prompts: list[list[int]], answer_tokens: int, caches: list[tuple[int, int]]) -> int:
    """New tokens per answer, the same for every model: an NPU package's fixed cache (context, chunk) must hold the
    prompt, padded by og to whole chunks, and the answer."""
    if not caches or not prompts:
        return answer_tokens
    longest = max(map(len, prompts))
    room = min(context - padded_length(longest, chunk) for context, chunk in caches)
    if room < 16:
        raise UsageError(
            f"a GSM8K prompt of {longest} tokens leaves {room} of the NPU package's cache slots for the answer "
            "(og pads a prompt to whole chunks)",
            "build the NPU package with a larger --context-length",
        )
    return min(answer_tokens, room)


def _answer_problems(
    prompts: list[list[int]],
    keys: list[str],
    budget: int,
    stop_ids: set[int],
    subjects: list[Subject],
    answered: dict[str, int],
    journals: dict[str, Journal],
    reference_journal: Journal,
    models: _Models,
    track: Track[Any],
) -> None:
    """Greedy answers of the reference and every subject, problem by problem, each journaled with its wall time."""

    def missing(index: int, key: str) -> list[Subject]:
        return [s for s in subjects if index < answered[s.label] and key not in journals[s.label]]

    todo = [
        (index, prompt, key)
        for index, (prompt, key) in enumerate(zip(prompts, keys, strict=True))
        if key not in reference_journal or missing(index, key)
    ]
    drafter = next((s for s in subjects if s.device == "cpu"), subjects[0])

    def draft(prefix: list[int], new_tokens: int) -> list[int]:  # a streamed reference checks a package's text
        return list(models.runner(drafter).greedy(prefix, new_tokens))

    for index, prompt, key in track(todo, len(todo), f"GSM8K answers, reference + {len(subjects)} packages"):
        if key not in reference_journal:
            started = time.perf_counter()
            (tokens,) = models.reference().greedy_many([prompt], budget, stop_ids, draft)
            reference_journal.record(key, tokens=tokens, seconds=time.perf_counter() - started)
        for subject in missing(index, key):
            started = time.perf_counter()
            tokens = models.runner(subject).greedy(prompt, budget)
            journals[subject.label].record(key, tokens=tokens, seconds=time.perf_counter() - started)


def _answers(journal: Journal, keys: list[str], tokenizer: Any) -> Answers:
    replies = [tokenizer.decode(journal[key]["tokens"], skip_special_tokens=True) for key in keys]
    return Answers(replies, [final_answer(r) for r in replies], sum(journal[key]["seconds"] for key in keys))


def _task_metrics(
    journal: Journal,
    reference_journal: Journal,
    keys: list[str],
    tokenizer: Any,
    questions: list[str],
    gold: list[str],
    reference_answers: Answers,
) -> dict[str, Any]:
    """GSM8K accuracy and agreement with the reference's answers and tokens; {} when no problem was asked."""
    if not keys:
        return {}
    answers = _answers(journal, keys, tokenizer)
    reference_tokens = [reference_journal[key]["tokens"] for key in keys]
    package_tokens = [journal[key]["tokens"] for key in keys]
    divergences = [first_divergence(r, p) for r, p in zip(reference_tokens, package_tokens, strict=True)]
    matched = sum(len(r) if d is None else d for r, d in zip(reference_tokens, divergences, strict=True))
    new_tokens = sum(map(len, package_tokens))
    return {
        "problems": len(keys),
        "accuracy": answers.accuracy(gold),
        "answer_agreement": answers.agreement(reference_answers),
        "unanswered": sum(answer is None for answer in answers.answers),
        "greedy_identical": sum(d is None for d in divergences) / len(keys),
        "greedy_agreement": matched / max(sum(map(len, reference_tokens)), 1),
        "new_tokens": new_tokens,
        "seconds": round(answers.seconds, 1),
        "seconds_per_problem": round(answers.seconds / len(keys), 2),
        "tokens_per_second": round(new_tokens / max(answers.seconds, 1e-9), 1),
        "differences": [
            {"problem": index, "question": question, "reference": ref, "package": pkg, "reply": reply[-400:]}
            for index, (question, ref, pkg, reply) in enumerate(
                zip(questions, reference_answers.answers, answers.answers, answers.replies, strict=True)
            )
            if ref != pkg
        ][:5],
    }


def _reference_task(answers: Answers, journal: Journal, keys: list[str], gold: list[str]) -> dict[str, Any]:
    if not keys:
        return {}
    new_tokens = sum(len(journal[key]["tokens"]) for key in keys)
    return {
        "problems": len(keys),
        "accuracy": answers.accuracy(gold),
        "unanswered": sum(answer is None for answer in answers.answers),
        "new_tokens": new_tokens,
        "seconds": round(answers.seconds, 1),
        "seconds_per_problem": round(answers.seconds / len(keys), 2),
    }


def _package_bytes(package_dir: Path) -> int:
    return sum(path.stat().st_size for path in package_dir.rglob("*") if path.is_file())

"""The docs cannot rot: every ``bash``/``sh`` code block of README.md and docs/**/*.md is run, page by page in
order, in one working dir (later pages use earlier outputs such as runs/ae).

* ``ldmkit ...`` lines run for real at tiny size: the per-command overrides of ``TINY`` are appended (the last
  value of a key wins in Hydra), ``--samples N`` is capped. They run in this process through the same Typer
  app as the console script (the import cost is paid once; ``LDMKIT_DOCS_SUBPROCESS=1`` runs the console script
  instead), except lines that start processes of their own (``SUBPROCESS``), which run the console script.
* Lines that cannot run here (several GPUs, SLURM, downloads, real pretrained weights, hours of training) match a
  rule of ``CONFIG_ONLY`` and run with ``--cfg job``: the config is composed and every override validated
  (a sweep ``-m a=1,2`` is checked value by value), so a renamed option still fails this test.
* Inputs the examples read (``data/images``, ``data/shards``, ``prompts.txt``, CompVis checkpoints, ...) are
  made by ``docs_inputs`` the first time a line mentions them.
* Other shell lines either run (``SHELL_RUN``) or are skipped with a reason (``SHELL_SKIP``); anything else
  fails. ``python`` blocks are executed. ``console`` blocks are transcripts: each ``$ ldmkit ...`` command is
  run (at tiny size) and must print the lines shown under it (whitespace aside), exiting with 2 when they are an
  ``error:``. Other blocks (``text``, ``yaml``, none) are only read.
* FID is left out of the runs (``metrics=`` of eval-fid, train-ae's rFID): its 2048x2048 eigendecomposition
  takes half a minute at any sample count on 2 cores; tests/evaluation/ test it.

Also checked: inline ``key=value`` / ``group.key`` spans in the prose name real options, relative links point to
existing files, and the defaults in the option tables of docs/commands/ and docs/groups/ (rows
``| `key` | `default` | ...``) are those of the composed config.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ldmkit_inprocess
from docs_inputs import INCEPTION_FILE, ensure_inputs
from docs_pages import REPO, blocks, pages

LDMKIT = Path(sys.executable).with_name("ldmkit")

# Appended to every real run of the command (tiny size; the last value of a key wins).
NO_INCEPTION = "no-inception-weights-in-the-docs-test"  # train-ae: skip the rFID of the report (see above)
TINY = {
    "train-ae": ["trainer.max_steps=2", "loader.batch_size=4", "report.images=8", "report.grid=4", "images.count=4",
                 f"report.inception_weights={NO_INCEPTION}", "report.on_missing_weights=skip"],
    "train-ldm": ["trainer.max_steps=2", "loader.batch_size=4", "images.count=2", "images.steps=2"],
    "encode-dataset": ["batch_size=16"],
    "sample": ["sampler.steps=2"],
    "eval-fid": ["sampler.steps=2", "batch_size=8", "metrics=[isc,kid,prc]"],
}
MAX_SAMPLES = 8  # eval-fid --samples N is capped at this
SHAPES_SIZE = "dataset.size=64"  # encode-dataset of the built-in dataset: 64 images, not 10,000

# (pattern on the line, reason): such lines are checked with --cfg job instead of run
CONFIG_ONLY = [
    (r"trainer=fsdp", "FSDP needs GPUs"),
    (r"trainer\.devices=([3-9]|\d\d)|trainer\.num_nodes=([2-9]|\d\d)", "more devices or nodes than this machine"),
    (r"hydra/launcher=submitit_slurm", "needs a SLURM cluster"),
    (r"https?://|\bpipe:|\bs3://", "reads from the network"),
    (r"cond=clip\b|cond\.weights=", "needs OpenCLIP weights"),
    (r"ldmkit f-study", "an f-study trains and evaluates one LDM per f: minutes even at toy size "
                        "(tests/tasks/test_f_study.py runs the toy study through the CLI)"),
    (r"ldmkit (info|report) runs/f-study-toy", "reads the toy f-study above"),
    (r"--samples (\d{5,})", "a paper-size evaluation"),
    (r"loggers\.WandbLogger", "needs the wandb package and an account"),
    (r"trainer=ddp", "starts a process per device (tests/training/test_ddp.py trains with DDP on CPU)"),
    (r"--workers [2-9]", "starts worker processes (tests/tasks/test_encode_resume.py runs --workers)"),
    (r"vgg16-397923af\.pth", "needs torchvision's VGG16 weights (528 MB)"),
    (r"speed\.compile=true", "compiling takes a minute (tests/test_speed.py checks compiled = eager outputs)"),
    (r"\bexperiment=", "a paper-size model (tests/test_paper_presets.py builds each on the meta device)"),
    # To keep this test short, lines whose code path another documented line runs for real are config-checked:
    (r"\bout=runs/(ae-kl-f4|ae-kl-f16|ae-64|ae-kl-f8-wide|ae-vq-f4|ae-vq-f16|ldm-sweep|ldm-class128|s-class128"
     r"|s-dpmpp|eval-dpmpp|eval-euler-a|ldm-wds|eval-kl-f8|ldm-kl8)\b",
     "the same code path runs for real in another documented line"),
]
# lines that start processes of their own run the console script in a subprocess, not in this process (none run
# for real at present: DDP and --workers lines are config-checked above)
SUBPROCESS = [r"trainer=ddp", r"--workers [2-9]"]

SHELL_RUN = {"mkdir", "ls", "cat", "cp", "printf", "echo", "head"}
SHELL_SKIP = {
    "pip": "installs packages",
    "make": "make demo / make test run the whole pipeline / suite (tested by CI themselves)",
    "img2dataset": "downloads images from the internet",
    "tensorboard": "starts a web server",
    "kill": "signals a running job (pre-emption is tested in tests/training/test_resume.py)",
    "sbatch": "needs a SLURM cluster",
    "srun": "needs a SLURM cluster",
    "torchrun": "starts one process per GPU",
}


def command_lines(body: str) -> list[str]:
    """The logical lines of a shell block (backslash continuations joined, blank and comment lines dropped)."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass
class Outcome:
    """What happened to one documented line."""

    page: str
    line: str
    mode: str  # run | subprocess | config | shell | skip | python
    seconds: float = 0.0
    note: str = ""


@dataclass
class DocsRun:
    """One working dir shared by all pages, run in reading order, each page once."""

    root: Path
    env: dict[str, str]
    stand_ins: dict
    done: dict[str, BaseException | None] = field(default_factory=dict)
    log: list[Outcome] = field(default_factory=list)

    def ensure(self, page: str) -> None:
        """Run every page before ``page`` (once), then ``page``; a failed earlier page is named."""
        order = pages()
        for earlier in order[: order.index(page)]:
            if earlier not in self.done:
                self._run_page(earlier)
            if self.done[earlier] is not None:
                pytest.fail(f"{page} needs the outputs of {earlier}, which failed: {self.done[earlier]}")
        if page not in self.done:
            self._run_page(page)
        if self.done[page] is not None:
            raise self.done[page]

    def _run_page(self, page: str) -> None:
        try:
            text = (REPO / page).read_text()
            for info, body, lineno in blocks(text):
                if info in ("bash", "sh", "shell"):
                    for line in command_lines(body):
                        self.run_line(page, lineno, line)
                elif info == "console":
                    for line, expected in transcript(body):
                        self.run_transcript(page, lineno, line, expected)
                elif info == "python":
                    self.run_python(page, lineno, body)
            self.done[page] = None
        except BaseException as exc:  # recorded for the pages that depend on this one
            self.done[page] = exc

    @contextlib.contextmanager
    def environment(self):
        """The working dir and environment every documented command sees."""
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.update(self.env)
        try:
            os.chdir(self.root)
            yield
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)

    def run_python(self, page: str, lineno: int, body: str) -> None:
        start = time.perf_counter()
        with self.environment():
            try:
                exec(compile(body, f"{page}:{lineno}", "exec"), {"__name__": "__docs__"})
            except Exception as exc:
                pytest.fail(f"{page}:{lineno}: the python block failed: {type(exc).__name__}: {exc}")
        self.log.append(Outcome(page, f"python block at line {lineno}", "python", time.perf_counter() - start))

    def run_line(self, page: str, lineno: int, line: str) -> None:
        with self.environment():  # globs expand in the working dir
            argv = shell_words(line)
        if not argv:
            return
        where = f"{page}:{lineno}: {line}"
        repeated = sorted(k for k in _keys(argv[1:]) if sum(a.split("=", 1)[0] == k for a in argv) > 1)
        if argv[0] == "ldmkit" and repeated:
            pytest.fail(f"{where}\n  sets {repeated} more than once after shell expansion (quote brace patterns)")
        if argv[0] != "ldmkit":
            if argv[0] in SHELL_SKIP:
                self.log.append(Outcome(page, line, "skip", note=SHELL_SKIP[argv[0]]))
                return
            if argv[0] not in SHELL_RUN:
                pytest.fail(f"{where}\n  '{argv[0]}' is neither run nor skipped: add it to SHELL_RUN or SHELL_SKIP")
            with self.environment():
                proc = subprocess.run(line, shell=True, capture_output=True, text=True, check=False)
            if proc.returncode:
                pytest.fail(f"{where}\n  exited {proc.returncode}: {proc.stderr.strip()}")
            self.log.append(Outcome(page, line, "shell"))
            return
        ensure_inputs(line, self.root, self.stand_ins)
        reason = next((why for pattern, why in CONFIG_ONLY if re.search(pattern, line)), None)
        start = time.perf_counter()
        if reason:
            for args in config_checks(argv[1:]):
                code, out = self.ldmkit(args, subprocess_=False)
                if code != 0:
                    pytest.fail(f"{where}\n  --cfg job: ldmkit {shlex.join(args)} exited {code}\n{tail(out)}")
            self.log.append(Outcome(page, line, "config", time.perf_counter() - start, reason))
            return
        args = tiny(argv[1:])
        separate = any(re.search(p, line) for p in SUBPROCESS) or os.environ.get("LDMKIT_DOCS_SUBPROCESS") == "1"
        code, out = self.ldmkit(args, subprocess_=separate)
        if code != 0:
            pytest.fail(f"{where}\n  ran as: ldmkit {shlex.join(args)}\n  exited {code}\n{tail(out)}")
        self.log.append(Outcome(page, line, "subprocess" if separate else "run", time.perf_counter() - start))

    def run_transcript(self, page: str, lineno: int, line: str, expected: list[str]) -> None:
        """Run a ``$ ldmkit ...`` line of a console block; its output must contain the lines shown."""
        where = f"{page}:{lineno}: $ {line}"
        with self.environment():
            argv = shell_words(line)
        if not argv or argv[0] != "ldmkit":
            pytest.fail(f"{where}\n  console blocks show ldmkit commands only")
        ensure_inputs(line, self.root, self.stand_ins)
        start = time.perf_counter()
        code, out = self.ldmkit(tiny(argv[1:]), subprocess_=False)
        got = " ".join(out.split())
        missing = [e for e in expected if " ".join(e.split()) not in got]
        if missing:
            pytest.fail(f"{where}\n  exited {code}; the output lacks {missing[0]!r}\n{tail(out)}")
        if expected and expected[0].startswith("error:") and code != 2:
            pytest.fail(f"{where}\n  printed the error but exited {code}, not 2")
        self.log.append(Outcome(page, line, "transcript", time.perf_counter() - start))

    def ldmkit(self, args: list[str], subprocess_: bool) -> tuple[int, str]:
        """Run ``ldmkit ARGS`` in the working dir: its exit code and output."""
        with self.environment():
            if subprocess_:
                proc = subprocess.run([str(LDMKIT), *args], capture_output=True, text=True, timeout=900, check=False)
                return proc.returncode, proc.stdout + proc.stderr
            return ldmkit_inprocess(args)


def transcript(body: str) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a console block, each with the output lines shown under it."""
    runs: list[tuple[str, list[str]]] = []
    for line in re.sub(r"\\\n\s*", " ", body).splitlines():
        if line.startswith("$ "):
            runs.append((line[2:].strip(), []))
        elif line.strip() and runs:
            runs[-1][1].append(line.strip())
        elif line.strip():
            pytest.fail(f"console block: output before the first '$ ' command: {line!r}")
    return runs


def shell_words(line: str) -> list[str]:
    """The arguments bash passes for ``line`` (quotes removed, braces and globs expanded, comments dropped)."""
    proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.fail(f"bash cannot parse the documented line: {line}\n{proc.stderr}")
    return [w for w in proc.stdout.split("\0")[:-1] if w]


def tail(text: str, lines: int = 25) -> str:
    """The end of a command's output."""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _command(args: list[str]) -> tuple[int, str]:
    """Index and name of the subcommand (after global options such as --debug)."""
    i = next(i for i, a in enumerate(args) if not a.startswith("-"))
    return i, args[i]


def _keys(args: list[str]) -> set[str]:
    """The keys the overrides set (``+a.b=1`` -> ``a.b``)."""
    return {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and not a.startswith("-")}


def tiny(args: list[str]) -> list[str]:
    """The documented arguments at tiny size: per-command overrides appended, ``--samples`` capped."""
    i, command = _command(args)
    out = list(args)
    if "--cfg" in out or "--help" in out:
        return out  # prints the config or the help: already tiny (and Hydra takes no overrides after --cfg job)
    for j, arg in enumerate(out):
        if j > 0 and out[j - 1] == "--samples" and arg.isdigit():
            out[j] = str(min(int(arg), MAX_SAMPLES))
        if arg.startswith("samples=") and arg[8:].isdigit():
            out[j] = f"samples={min(int(arg[8:]), MAX_SAMPLES)}"
    extra = list(TINY.get(command, []))
    keys = _keys(args)
    if command == "train-ae" and not any(k.startswith("loss.perceptual") for k in keys):
        extra.append("loss.perceptual.weights=random")  # LPIPS with a random VGG16: no weights offline
    if command == "encode-dataset" and "--verify" not in args and not any(
            a.startswith("dataset=") and a != "dataset=shapes" for a in args):
        extra.append(SHAPES_SIZE)
    return out + extra


def config_checks(args: list[str]) -> list[list[str]]:
    """``--cfg job`` versions of a command line: one per value of its longest sweep when it is a multirun."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    i, command = _command(args)
    head, rest = args[: i + 1], args[i + 1:]
    multirun = any(a in ("-m", "--multirun") for a in rest)
    rest = [a for a in rest if a not in ("-m", "--multirun")]
    positional = command in ("report", "info", "import-compvis")  # DIR / CONFIG.yaml MODEL.ckpt come first
    cfg = ["--cfg", "job"]
    if not multirun:
        return [head + (rest + cfg if positional else cfg + rest)]
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {o.input_line: list(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()}
    runs = max((len(v) for v in values.values()), default=1)
    checks = []
    for k in range(runs):
        picked = []
        for a in rest:
            if a in values:
                key = a.split("=", 1)[0]
                picked.append(f"{key}={values[a][min(k, len(values[a]) - 1)]}")
            else:
                picked.append(a)
        checks.append(head + (picked + cfg if positional else cfg + picked))
    return checks


@pytest.fixture(scope="session")
def docs_run(tmp_path_factory, inception_weights) -> DocsRun:
    """The shared working dir, with a random-weight Inception where the docs tell users to put the real one."""
    root = tmp_path_factory.mktemp("docs")
    torch_home = tmp_path_factory.mktemp("torch_home")
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / INCEPTION_FILE).symlink_to(inception_weights)
    env = {"TORCH_HOME": str(torch_home), "LDMKIT_CACHE": str(tmp_path_factory.mktemp("ldmkit_cache")),
           "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    return DocsRun(root, env, {"inception": inception_weights})


@pytest.mark.parametrize("page", pages())
def test_page(docs_run, page):
    docs_run.ensure(page)


def test_summary(docs_run, request):
    """Print what ran, what was only config-checked and what was skipped (pytest -s shows it)."""
    for page in pages():
        docs_run.ensure(page)
    modes: dict[str, int] = {}
    for o in docs_run.log:
        modes[o.mode] = modes.get(o.mode, 0) + 1
    print("\ndocs examples:", ", ".join(f"{n} {m}" for m, n in sorted(modes.items())))
    for o in docs_run.log:
        print(f"  [{o.mode:10s}] {o.seconds:5.1f}s {o.page}: {o.line[:110]}{'  -- ' + o.note if o.note else ''}")
    assert modes.get("run", 0) + modes.get("subprocess", 0) > 0

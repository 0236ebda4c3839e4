"""The `keras-prune` command line (also `python -m keras_prune`).

`keras-prune compare` runs the seed article's experiment (see
`keras_prune.compare.experiment`): the dense baseline and one pruned model per
schedule, sparsity distribution and sparsity, for N seeds, then prints one table with a column
per schedule and Welch's t-test between schedules. `--out DIR` writes
`results.json`, `results.csv` and PNG plots. Bad input prints one line on
stderr and exits with status 2.

The Keras backend is chosen before Keras is imported: `--backend`, else
`KERAS_BACKEND`, else tensorflow. Nothing this module imports at the top
imports Keras (`import keras_prune` does not either), so the command reads
its arguments first and then loads Keras once, with that backend.

Example:

    $ keras-prune compare --epochs 2 --limit 2000 --out out/
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from keras_prune.compare.datasets import DATASETS
from keras_prune.compare.results import STRUCTURES, run_distributions, shown_distribution
from keras_prune.compare.results import label as run_label

__all__ = ["main"]

BACKENDS = ("tensorflow", "jax", "torch")
# keras_prune.sparsity_distribution.NAMES, which imports Keras (the backend
# is not chosen yet when arguments are parsed); test_cli checks they agree.
DISTRIBUTIONS = ("uniform", "global", "erk")
_USAGE_ERROR = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def _sparsities(text: str) -> list[float]:
    return [_fraction(item) for item in _comma_list(text)]


def _names(kind: str, allowed: Sequence[str]) -> Any:
    """An argparse type: a comma-separated list of `allowed` names."""

    def parse(text: str) -> list[str]:
        items = _comma_list(text)
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {item!r}: use {', '.join(allowed)}"
                )
        return items

    return parse


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1)") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1)")
    return value


def _end_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1]")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="keras-prune", description="Magnitude pruning experiments with keras-prune."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare = commands.add_parser(
        "compare",
        help="train the seed article's ConvNet dense and with each pruning schedule, and compare",
        description="Train the dense baseline and one pruned model per schedule and sparsity "
        "(the seed article's ConvNet and settings by default), then compare accuracy, sparsity, "
        "size and speed.",
    )
    add = compare.add_argument
    add(
        "--schedules",
        type=_comma_list,
        default=["constant", "polynomial"],
        metavar="LIST",
        help="comma-separated: constant, polynomial, or package.module:callable called with "
        "keyword arguments sparsity, begin_step, end_step, frequency and returning a "
        "keras_prune.PruningSchedule (default: constant,polynomial)",
    )
    add(
        "--sparsity",
        type=_sparsities,
        default=[0.875],
        metavar="LIST",
        help="target sparsity in [0, 1), or several comma-separated (default: 0.875)",
    )
    add(
        "--distribution",
        type=_names("distribution", DISTRIBUTIONS),
        default=["uniform"],
        metavar="LIST",
        help="how each schedule's sparsity is spread over the layers, comma-separated: "
        "uniform (every layer the same), global (one magnitude threshold), erk "
        "(Erdős–Rényi-Kernel: small layers denser) (default: uniform)",
    )
    add(
        "--structure",
        type=_names("structure", STRUCTURES),
        default=["weights"],
        metavar="LIST",
        help="what the schedules remove, comma-separated: weights (single weights, zeros in "
        "dense kernels), channels (whole channels, keras_prune.prune_channels, then shrink: "
        "smaller, faster layers) (default: weights)",
    )
    add(
        "--epochs", type=_at_least(1), default=30, metavar="N", help="training epochs (default: 30)"
    )
    add(
        "--batch-size",
        type=_at_least(1),
        default=250,
        metavar="N",
        help="batch size (default: 250)",
    )
    add(
        "--begin-fraction",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="pruning begins at step int(F * training steps) (default: 0.2)",
    )
    add(
        "--end-fraction",
        type=_end_fraction,
        default=1.0,
        metavar="F",
        help="pruning ends at step int(F * training steps), leaving the rest to fine-tune at "
        "the final sparsity (default: 1.0, the last batch, as in the seed article)",
    )
    add(
        "--frequency",
        type=_at_least(1),
        default=100,
        metavar="N",
        help="prune every N steps (default: 100)",
    )
    add(
        "--seeds",
        type=_at_least(1),
        default=1,
        metavar="N",
        help="repeat every run with seeds 0..N-1; report mean ± std and Welch's t-test (default: 1)",
    )
    add(
        "--dataset",
        choices=DATASETS,
        help="mnist10k (embedded, 8000 train / 2000 test), mnist or fashion_mnist (default: mnist10k)",
    )
    add("--data-dir", metavar="DIR", help="directory with the IDX files of mnist or fashion_mnist")
    add(
        "--model",
        metavar="FILE",
        help="your own model, a .keras file, in place of the seed's ConvNet: every run starts "
        "from its weights and trains with the optimizer, loss and metrics it was compiled with",
    )
    add(
        "--data",
        metavar="FILE",
        help="your own data in place of --dataset: an .npz file with arrays x_train, y_train, "
        "x_test, y_test (numpy.savez)",
    )
    add("--loss", metavar="NAME", help="with --model: a Keras loss in place of the file's")
    add(
        "--import",
        dest="imports",
        type=_comma_list,
        default=[],
        metavar="LIST",
        help="with --model: comma-separated modules to import first, which register the "
        "model's custom layers (e.g. keras_hub, my_layers)",
    )
    add(
        "--metrics",
        type=_comma_list,
        metavar="LIST",
        help="with --model: comma-separated Keras metrics in place of the file's; the first is "
        "compared (default: the file's; none: the loss)",
    )
    add(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    add("--out", metavar="DIR", help="write results.json, results.csv and PNG plots to DIR")
    add(
        "--resume",
        action="store_true",
        help="keep the runs already in DIR/results.json (same settings; --seeds may be larger) "
        "and train only the rest; needs --out",
    )
    add(
        "--limit",
        type=_at_least(2),
        metavar="N",
        help="use only the first N training and the first N test images (quick checks)",
    )
    add(
        "--tflite",
        action=argparse.BooleanOptionalAction,
        help="measure sparse float32 and int8 .tflite files and the int8 file's accuracy "
        "in LiteRT (default: when TensorFlow and ai-edge-litert are installed and LiteRT "
        "runs the model; --model's file is exported once before training to find out)",
    )
    add("--quiet", action="store_true", help="no progress bars or per-run lines")
    return parser


def _error(message: str) -> int:
    print(f"keras-prune: error: {message}", file=sys.stderr)
    return _USAGE_ERROR


def _check_writable(directory: str) -> str | None:
    """None if `directory` can be created and written, else why not."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".keras-prune-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        return f"--out {directory!r} is not writable: {error.strerror or error}"
    return None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _mean_std(pair: Sequence[float] | None, digits: int, seeds: int) -> str:
    if pair is None:
        return "-"  # not measured (e.g. no .tflite without TensorFlow and LiteRT)
    mean, std = pair
    return f"{mean:.{digits}f}" if seeds == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seconds(pair: Sequence[float], seeds: int) -> str:
    """Seconds to three significant digits: a small model's 0.004 s epoch is not "0.00"."""
    mean, std = pair
    return f"{mean:.3g}" if seeds == 1 else f"{mean:.3g} ± {std:.2g}"


def _count(pair: Sequence[float] | None) -> str:
    """A mean count in thousands or millions ("1.23 M"); "-" where not measured."""
    if pair is None:
        return "-"  # runs resumed from results.json format 4 and older
    mean = pair[0]
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if mean >= scale:
            return f"{mean / scale:.3g}{suffix}"
    return f"{mean:.0f}"


def _bytes(pair: Sequence[float] | None, seeds: int) -> str:
    if pair is None:
        return "-"
    mean, std = pair
    return f"{mean:,.0f} B" if seeds == 1 else f"{mean:,.0f} ± {std:,.0f} B"


def format_results(results: dict[str, Any]) -> str:
    """The comparison table, the t-tests and the seed's figures, as text."""
    config, data, steps = results["config"], results["data"], results["steps"]
    summary = results["summary"]
    several = len(config["sparsities"]) > 1
    seeds = [row["seeds"] for row in summary]
    metric = results.get("metric", "accuracy")  # format 3 and older: the seed's accuracy
    model = config.get("model")
    what = f"{model} on {config['dataset']}" if model else config["dataset"]
    samples = "images" if config["dataset"] in DATASETS else "samples"
    lines = [
        f"keras-prune compare: {what} ({data['train']} train / {data['validation']} "
        f"validation / {data['test']} test {samples}), backend {results['environment']['backend']}, "
        f"{config['epochs']} epochs of {steps['per_epoch']} steps, batch {config['batch_size']}, "
        f"pruning steps {steps['begin_step']}..{steps['end_step']} every {config['frequency']}, "
        f"seeds {min(min(s) for s in seeds)}..{max(max(s) for s in seeds)}",
        "",
    ]
    distributions = run_distributions(config)
    headers = [
        run_label(
            row["schedule"],
            row["sparsity"],
            several,
            shown_distribution(distributions, row.get("distribution", "uniform")),
        )
        for row in summary
    ]
    table: list[tuple[str, list[str]]] = [("", headers)]
    count = [len(row["seeds"]) for row in summary]
    table.append(("seeds", [str(n) for n in count]))
    table.append(
        (
            f"test {metric}",
            [_mean_std(row["test_accuracy"], 4, n) for row, n in zip(summary, count)],
        )
    )
    others = [
        m
        for m in summary[0].get("test_metrics", {})
        if m not in ("loss", metric) and all(m in row.get("test_metrics", {}) for row in summary)
    ]
    for other in others:
        table.append(
            (
                f"test {other}",
                [_mean_std(row["test_metrics"][other], 4, n) for row, n in zip(summary, count)],
            )
        )
    if metric != "loss":
        table.append(
            ("test loss", [_mean_std(row["test_loss"], 4, n) for row, n in zip(summary, count)])
        )
    for key, name in (
        ("int8_test_accuracy", f"int8 test {metric}"),
        ("tflite_int8_test_accuracy", f"int8 .tflite test {metric}"),
    ):
        table.append((name, [_mean_std(row[key], 4, n) for row, n in zip(summary, count)]))
    for layer in summary[0]["layer_sparsity"]:
        table.append(
            (f"sparsity {layer}", [f"{row['layer_sparsity'][layer]:.2%}" for row in summary])
        )
    table.append(("sparsity total", [f"{row['total_sparsity'][0]:.2%}" for row in summary]))
    for key, name in (
        ("gzip_h5_bytes", "zipped .h5"),
        ("gzip_keras_bytes", "zipped .keras"),
        ("export_float32_bytes", "export float32 .kps"),
        ("export_int8_bytes", "export int8 .kps"),
        ("tflite_float32_bytes", "sparse float32 .tflite"),
        ("tflite_int8_bytes", "sparse int8 .tflite"),
    ):
        table.append((name, [_bytes(row[key], n) for row, n in zip(summary, count)]))
    table.append(
        (
            "compression vs dense .h5",
            [
                f"{row['compression_ratio']:.2f}x" if row["compression_ratio"] else "-"
                for row in summary
            ],
        )
    )
    table.append(
        (
            "seconds per epoch",
            [_seconds(row["seconds_per_epoch"], n) for row, n in zip(summary, count)],
        )
    )
    table.append(("parameters", [_count(row.get("parameters")) for row in summary]))
    table.append(("FLOPs per sample", [_count(row.get("flops")) for row in summary]))
    table.append(
        (
            f"predict ms (batch {config['batch_size']})",
            [_mean_std(row.get("predict_ms"), 1, n) for row, n in zip(summary, count)],
        )
    )
    first = max(len(name) for name, _ in table)
    width = max(len(cell) for _, cells in table for cell in cells)
    for name, cells in table:
        lines.append(f"{name:<{first}}  " + "  ".join(f"{cell:>{width}}" for cell in cells))

    if results["tests"]:
        lines.append("")
    for test in results["tests"]:
        where = f" at sparsity {test['sparsity']:g}" if several else ""
        head = (
            f"{test['first']} - {test['second']}{where}: "
            f"test {metric} difference {test['accuracy_difference']:+.4f}"
        )
        if test["p_value"] is None:
            lines.append(f"{head}; no t-test (needs --seeds 2 or more and some spread)")
        else:
            verdict = "significant" if test["significant"] else "not significant"
            lines.append(f"{head}, Welch's t-test p = {test['p_value']:.3g}: {verdict} at 0.05")

    if config["dataset"] in ("mnist", "mnist10k") and not model:
        figures = results["seed_figures"]
        lines += [
            "",
            "The seed article's figures (full MNIST, tfmot, one run each): "
            + "; ".join(
                f"{name} test accuracy {f['test_accuracy']}, loss {f['test_loss']}, "
                f"zipped .h5 {f['gzip_h5_bytes']:,} B"
                for name, f in figures.items()
                if name != "baseline"
            )
            + f"; baseline zipped .h5 {figures['baseline']['gzip_h5_bytes']:,} B.",
        ]
    warned = sorted({m for row in summary for m in row["warnings"]})
    if warned:
        lines += ["", *(f"warning: {m}" for m in warned)]
    return "\n".join(lines)


def _resume(comparison: Any, directory: str) -> None:
    """Loads `directory`/results.json into `comparison`; none there: a fresh start."""
    path = os.path.join(directory, "results.json")
    if not os.path.exists(path):
        print(f"keras-prune: no {path} to resume; starting from the first run", file=sys.stderr)
        return
    try:
        with open(path) as handle:
            previous = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot resume from {path}: {error}") from None
    comparison.resume(previous)
    planned = len(comparison.planned_runs())
    print(
        f"keras-prune: resuming {path}: {len(comparison.runs)} of {planned} runs done",
        file=sys.stderr,
    )


def _run_compare(args: argparse.Namespace) -> int:

    try:  # SciPy (t-tests), and matplotlib for --out's plots: the [compare] extra
        from keras_prune.compare import experiment, plots
        from keras_prune.compare.datasets import DatasetUnavailableError

        if args.out:
            plots.require_matplotlib()
    except ImportError as error:
        message = str(error)
        hint = "" if "pip install" in message else "; pip install 'keras-prune[compare]'"
        return _error(f"keras-prune compare: {message}{hint}")

    try:
        config = experiment.ExperimentConfig(
            schedules=tuple(args.schedules),
            sparsities=tuple(args.sparsity),
            distributions=tuple(args.distribution),
            structures=tuple(args.structure),
            epochs=args.epochs,
            batch_size=args.batch_size,
            begin_fraction=args.begin_fraction,
            end_fraction=args.end_fraction,
            frequency=args.frequency,
            seeds=args.seeds,
            dataset=args.data or args.dataset or "mnist10k",
            data_dir=args.data_dir,
            model=args.model,
            loss=args.loss,
            metrics=None if args.metrics is None else tuple(args.metrics),
            imports=tuple(args.imports),
            limit=args.limit,
            verbose=0 if args.quiet else 1,
            tflite="auto" if args.tflite is None else args.tflite,
        )
        try:
            comparison, task = experiment.prepare(config)
        except experiment.TfliteUnavailableError as error:  # asked for by --tflite
            return _error(f"{error}; pass --no-tflite to compare without .tflite measures")
        if args.resume:
            _resume(comparison, args.out)
    except DatasetUnavailableError as error:
        return _error(str(error))
    except (ValueError, TypeError) as error:
        return _error(str(error))
    for note in comparison.notes:
        print(f"keras-prune: warning: {note}", file=sys.stderr, flush=True)
    planned, resumed = len(comparison.planned_runs()), len(comparison.runs)
    started = time.perf_counter()

    def on_run_end(comparison: experiment.Comparison, seconds: float) -> None:
        if args.out:
            comparison.write(args.out)
        if args.quiet:
            return
        run, done = comparison.runs[-1], len(comparison.runs)
        label = run_label(
            run.schedule,
            run.sparsity,
            len(config.sparsities) > 1,
            shown_distribution(run_distributions(vars(config)), run.distribution),
        )
        left = planned - done
        eta = (time.perf_counter() - started) / (done - resumed) * left
        remaining = f"{left} run(s) left, about {_duration(eta)}" if left else "all runs done"
        print(
            f"[{done}/{planned}] {label} seed {run.seed}: test {comparison.metric} "
            f"{run.test_accuracy:.4f}, "
            f"{_duration(seconds)}; {remaining}",
            flush=True,
        )

    try:
        comparison.run(task, on_run_end)
    except KeyboardInterrupt:
        print(
            f"keras-prune: interrupted after {len(comparison.runs)} of {planned} runs",
            file=sys.stderr,
        )
        return 130
    results = comparison.to_dict()
    print(format_results(results), flush=True)
    if args.out:
        written = comparison.write(args.out) + plots.write_plots(results, args.out)
        print("\nwrote " + ", ".join(written))
    return 0


@contextlib.contextmanager
def _native_stderr_closed() -> Iterator[None]:
    """Sends what native code writes to file descriptor 2 to /dev/null meanwhile
    (TensorFlow's oneDNN notice on import, LiteRT's "Created TensorFlow Lite
    XNNPACK delegate for CPU", which no log level turns off), while Python's
    `sys.stderr` (warnings, errors, tracebacks) still writes where it did."""
    sys.stderr.flush()
    python_stderr = sys.stderr
    try:
        on_fd_2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a capture (pytest's capsys) or a StringIO
        on_fd_2 = False
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        if on_fd_2:
            sys.stderr = os.fdopen(
                os.dup(saved),
                "w",
                buffering=1,
                encoding=python_stderr.encoding,
                errors=python_stderr.errors,
            )
        yield
    finally:
        if sys.stderr is not python_stderr:
            sys.stderr.close()
            sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line with `argv` (default `sys.argv[1:]`); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as error:
        return _error(str(error))
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    backend = args.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if backend not in BACKENDS:
        return _error(f"KERAS_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}")
    if args.data and args.dataset:
        return _error("--data and --dataset are alternatives: give one")
    if args.resume and not args.out:
        return _error("--resume needs --out DIR, the directory of the comparison to continue")
    if args.out and (problem := _check_writable(args.out)):
        return _error(problem)
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != backend:
        # Only a caller that imported Keras itself gets here: the command
        # imports Keras after reading --backend.
        return _error(
            f"Keras is already imported with the {loaded.backend.backend()} backend in this "
            f"process; run `keras-prune compare --backend {backend}` in a new process"
        )
    os.environ["KERAS_BACKEND"] = backend
    # TensorFlow's C++ INFO and WARNING lines ("Compiled cluster using XLA!",
    # CPU feature notes) are not for the command's user; a value set in the
    # environment wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_closed():
        # TensorFlow 2.21 writes its oneDNN notice to the process's stderr
        # on import, whatever its log level, and LiteRT a line when it first
        # runs a .tflite file. Keras imports TensorFlow, where installed, on
        # every backend (keras.utils.set_random_seed seeds it too).
        import keras  # noqa: F401

        if importlib.util.find_spec("tensorflow"):
            importlib.import_module("tensorflow")
        with warnings.catch_warnings():
            # keras_prune's warnings are collected per run and printed with the table.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"keras_prune\.")
            return _run_compare(args)

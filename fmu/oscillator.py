"""Build the damped oscillator FMU (`oscillator.c`, FMI 2.0 co-simulation) on this machine, with the C
compiler and the FMI headers fmpy ships: the worked example of docs/fmu.md and the FMU the tests use.

    python -m fmu.oscillator osc.fmu

m x'' = -k x - c x' + u: outputs x [m] and v [m/s], input u [N], parameters k [N/m], c [N.s/m] and
m [kg] (start 4, 0.4, 1); x starts at 1 m, v at 0. Nothing is downloaded. `--model-exchange-only` writes
an FMU that declares model exchange only (no binary), to show how such an FMU is refused.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from data_pipeline.errors import UserError, run_cli
from data_pipeline.store.files import atomic_write

MODEL_IDENTIFIER = "oscillator"
GUID = "{5d1c4c41-7b0b-4a8e-9a55-0f3c6e2f7a01}"
TRUE_PARAMETERS = {"k": 4.0, "c": 0.4, "m": 1.0}
"""The parameters the FMU starts with: what calibration should recover from data recorded with them."""

# (name, causality, variability, initial, start, unit); the value reference is the index (see oscillator.c).
VARIABLES = [
    ("x", "output", "continuous", "exact", 1.0, "m"),
    ("v", "output", "continuous", "exact", 0.0, "m/s"),
    ("u", "input", "continuous", None, 0.0, "N"),
    ("k", "parameter", "fixed", "exact", TRUE_PARAMETERS["k"], "N/m"),
    ("c", "parameter", "fixed", "exact", TRUE_PARAMETERS["c"], "N.s/m"),
    ("m", "parameter", "fixed", "exact", TRUE_PARAMETERS["m"], "kg"),
]


def model_description(model_exchange_only: bool = False) -> str:
    """The FMI 2.0 modelDescription.xml of the oscillator."""
    units = "".join(f'    <Unit name="{u}"/>\n' for u in dict.fromkeys(v[5] for v in VARIABLES))
    scalars = ""
    for vr, (name, causality, variability, initial, start, unit) in enumerate(VARIABLES):
        init = f' initial="{initial}"' if initial else ""
        scalars += (f'    <ScalarVariable name="{name}" valueReference="{vr}" causality="{causality}" '
                    f'variability="{variability}"{init}>\n      <Real start="{start}" unit="{unit}"/>\n'
                    "    </ScalarVariable>\n")
    kind = (f'  <ModelExchange modelIdentifier="{MODEL_IDENTIFIER}"/>\n' if model_exchange_only else
            f'  <CoSimulation modelIdentifier="{MODEL_IDENTIFIER}" canHandleVariableCommunicationStepSize="true"/>\n')
    outputs = "".join(f'      <Unknown index="{i + 1}"/>\n' for i, v in enumerate(VARIABLES) if v[1] == "output")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<fmiModelDescription fmiVersion="2.0" modelName="oscillator" guid="{GUID}" '
            'generationTool="twinworld fmu/oscillator.py" numberOfEventIndicators="0">\n'
            f"{kind}  <UnitDefinitions>\n{units}  </UnitDefinitions>\n"
            '  <DefaultExperiment startTime="0" stopTime="10" stepSize="0.05"/>\n'
            f"  <ModelVariables>\n{scalars}  </ModelVariables>\n"
            f"  <ModelStructure>\n    <Outputs>\n{outputs}    </Outputs>\n    <InitialUnknowns>\n{outputs}"
            "    </InitialUnknowns>\n  </ModelStructure>\n</fmiModelDescription>\n")


def _headers() -> Path:
    import fmpy

    return Path(fmpy.__file__).parent / "c-code"


def build(out: str | Path, model_exchange_only: bool = False) -> Path:
    """Compile oscillator.c and zip it with its model description into `out` (a .fmu); returns `out`."""
    out = Path(out)
    if out.suffix != ".fmu":
        raise UserError(f"{out}: expected a path ending in .fmu")
    with tempfile.TemporaryDirectory(prefix="fmu-build-") as tmp:
        root = Path(tmp)
        (root / "modelDescription.xml").write_text(model_description(model_exchange_only), encoding="utf-8")
        if not model_exchange_only:
            cc = shutil.which("cc") or shutil.which("gcc")
            if cc is None:
                raise UserError("building the oscillator FMU needs a C compiler (cc or gcc) on PATH")
            binary = root / "binaries" / "linux64" / f"{MODEL_IDENTIFIER}.so"
            binary.parent.mkdir(parents=True)
            src = Path(__file__).with_name("oscillator.c")
            result = subprocess.run([cc, "-shared", "-fPIC", "-O2", f"-I{_headers()}", str(src), "-o", str(binary),
                                     "-lm"], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise UserError(f"compiling {src} failed: {result.stderr.strip()}")
        out.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(root.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(root).as_posix())

        atomic_write(out, write)  # a reader never sees half a zip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmu.oscillator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the .fmu file to write")
    parser.add_argument("--model-exchange-only", action="store_true",
                        help="declare model exchange only (no co-simulation, no binary)")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        raise UserError(f"{args.out}: exists; expected a new path (nothing is overwritten)")
    print(f"fmu: {build(args.out, args.model_exchange_only)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m fmu.oscillator"))

#!/usr/bin/env python3
"""The environment side of benchmarks/gpu_check.sh: what this interpreter has, and an offline install of only what
it lacks.

    python3 benchmarks/gpu_kit.py env                               # interpreter, packages, accelerator
    python3 benchmarks/gpu_kit.py install WHEEL_DIR TARGET_DIR      # then put TARGET_DIR first on PYTHONPATH

`install` never touches the system environment and never uses the network. For each wheel in WHEEL_DIR it decides:
  - missing here -> install;
  - a pin (`--pins`, default datasets: the project's requirements.txt version) at another version -> install;
  - present at another version -> install only if a requirement of another wheel in the folder excludes the version
    here (e.g. datasets' fsspec<=...), otherwise keep the system's (transformers and torch were built against it);
  - never a wheel whose version a package already installed here excludes (transformers 5.17 requires
    huggingface-hub<2.0: a newer hub would break it). That one is reported and the system's kept.
Then it lists every requirement of the pins that is still unmet (say, pyarrow older than datasets declares) as a
warning: whether that matters is what the import check after it tells. Needs pip (or falls back to unzipping).
"""

import argparse
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface-hub",
            "numpy", "pandas", "pyarrow", "fsspec", "dill", "multiprocess", "xxhash", "scikit-learn", "scipy",
            "sentencepiece", "pyyaml", "wandb")


def installed_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def env():
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    for name in PACKAGES:
        version = installed_version(name)
        where = ""
        if version:
            files = importlib.metadata.distribution(name).locate_file("")
            where = f"  ({files})"
        print(f"  {name:<16}{version or 'MISSING'}{where}")
    try:
        import torch
    except ImportError as e:
        print(f"torch does not import: {e}")
        return 1
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
                  f"torch CUDA {torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    else:
        print(f"no CUDA device (torch {torch.__version__}); CPU threads {torch.get_num_threads()}")
    return 0


class Wheel:
    def __init__(self, path: Path):
        self.path = path
        name, version = path.name.split("-")[:2]
        self.name, self.version = canonicalize_name(name), version
        with zipfile.ZipFile(path) as z:
            metadata = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            lines = z.read(metadata).decode().splitlines()
        self.requires = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
        # Extras are never asked for here; markers about them evaluate with extra "".
        self.requires = [r for r in self.requires if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_requirements(name):
    """[(distribution, specifier)]: what the packages installed here require of `name`."""
    found = []
    for dist in importlib.metadata.distributions():
        for line in dist.requires or []:
            r = Requirement(line)
            if canonicalize_name(r.name) == name and (r.marker is None or r.marker.evaluate({"extra": ""})):
                found.append((canonicalize_name(dist.metadata["Name"]), r.specifier))
    return found


def plan(wheels, pins):
    """[(wheel, reason)] to install and [(name, have, reason)] kept: the rules in the module docstring."""
    constraints = {}
    for w in wheels:
        for r in w.requires:
            constraints.setdefault(canonicalize_name(r.name), []).append((w.name, r.specifier))
    install, keep = [], []
    for w in wheels:
        have = installed_version(w.name)
        excluded = [f"{by} needs {spec}" for by, spec in constraints.get(w.name, [])
                    if have and not spec.contains(have, prereleases=True)]
        if have is None:
            install.append((w, "missing"))
        elif have == w.version:
            keep.append((w.name, have, "same version"))
        elif w.name in pins:
            install.append((w, f"pinned {w.version}, have {have}"))
        elif excluded:
            install.append((w, f"have {have}, but {'; '.join(excluded)}"))
        else:
            keep.append((w.name, have, f"satisfies the wheels' requirements (wheel: {w.version})"))
    for w, reason in list(install):
        broken = [f"{by} needs {spec}" for by, spec in installed_requirements(w.name)
                  if by != w.name and not spec.contains(w.version, prereleases=True)]
        if broken:
            install.remove((w, reason))
            keep.append((w.name, installed_version(w.name), f"NOT installing {w.version}: {'; '.join(broken)}"))
    return install, keep


def unmet(wheels, pins, install):
    """Requirements of the pins that neither the system nor the install list satisfies."""
    final = {w.name: w.version for w, _ in install}
    problems = []
    for w in wheels:
        if w.name not in pins:
            continue
        for r in w.requires:
            name = canonicalize_name(r.name)
            have = final.get(name) or installed_version(name)
            if have is None or not r.specifier.contains(have, prereleases=True):
                problems.append(f"{w.name} {w.version} declares {r}; here: {have or 'missing'} (no wheel in the kit)")
    return problems


def install(args):
    wheels = [Wheel(p) for p in sorted(Path(args.wheel_dir).glob("*.whl"))]
    pins = {canonicalize_name(p) for p in args.pins}
    todo, keep = plan(wheels, pins)
    print(f"{len(wheels)} wheels in {args.wheel_dir}; target {args.target}")
    for name, have, reason in keep:
        print(f"  keep    {name} {have} ({reason})")
    for w, reason in todo:
        print(f"  install {w.name} {w.version} ({reason})")
    for problem in unmet(wheels, pins, todo):
        print(f"  WARNING {problem}")
    missing_pins = pins - {w.name for w in wheels} - {n for n in pins if installed_version(n)}
    for name in sorted(missing_pins):
        print(f"  ERROR   {name} is neither installed nor in the wheel folder")
    if not todo:
        return 1 if missing_pins else 0
    Path(args.target).mkdir(parents=True, exist_ok=True)
    files = [str(w.path) for w, _ in todo]
    try:
        import pip  # noqa: F401
    except ImportError:  # no pip: a wheel is a zip laid out for site-packages; these need no install scripts
        for f in files:
            zipfile.ZipFile(f).extractall(args.target)
        print("  (no pip: wheels unzipped)")
        return 1 if missing_pins else 0
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--quiet",
                           "--disable-pip-version-check", "--target", args.target, *files])
    return done.returncode or (1 if missing_pins else 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="Print the interpreter, package versions (and where they come from) and the GPU.")
    i = sub.add_parser("install", help="Install from WHEEL_DIR into TARGET_DIR only what is missing or must match.")
    i.add_argument("wheel_dir", help="Folder of .whl files (benchmarks/prepare_gpu_check.sh fills it).")
    i.add_argument("target", help="Private folder to install into; put it first on PYTHONPATH afterwards.")
    i.add_argument("--pins", nargs="*", default=["datasets"],
                   help="Packages that must be at the wheel's version (the project's pin) even if another is here.")
    args = p.parse_args(argv)
    return env() if args.command == "env" else install(args)


if __name__ == "__main__":
    sys.exit(main())

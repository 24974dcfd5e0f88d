#!/usr/bin/python3
"""Builds tools/finc_solve.pyx into an importable module under build/bench/ (cached).

    tools/build_solver.py [--out DIR] [--force]      (prints the module's path)

or, from Python, `build_solver.load()` returns the imported module. The source is
cythonized with cython3 (Debian's package) and compiled by gcc with -O3 -march=native
and OpenMP; nothing binary is committed. The cache is keyed by a hash of the .pyx
source, the flags, the compiler and the Python version, so an edit rebuilds it.
"""

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "finc_solve.pyx")
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "build", "bench")
MODULE = "finc_solve"
CFLAGS = ["-O3", "-march=native", "-fPIC", "-fopenmp", "-fno-strict-aliasing",
          "-Wno-unused-function", "-Wno-unreachable-code"]


def _cython_cmd():
    exe = shutil.which("cython3") or shutil.which("cython")
    return [exe] if exe else [sys.executable, "-m", "cython"]


def _compiler():
    return os.environ.get("CC", "gcc")


def _key():
    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    h.update(" ".join(CFLAGS + [_compiler(), sys.version, sysconfig.get_config_var("EXT_SUFFIX") or ""]).encode())
    return h.hexdigest()[:16]


def build(out_dir=DEFAULT_OUT, force=False, verbose=False):
    """Returns the path of the compiled module, building it if the cache is stale."""
    out_dir = os.path.abspath(out_dir)
    key = _key()
    dest_dir = os.path.join(out_dir, "finc_solve-" + key)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    so = os.path.join(dest_dir, MODULE + suffix)
    if os.path.exists(so) and not force:
        return so
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".tmp-finc_solve-%s-%d" % (key, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    c_file = os.path.join(tmp, MODULE + ".c")
    run = dict(check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p = subprocess.run(_cython_cmd() + ["-3", "-o", c_file, SOURCE], **run)
        if verbose and p.stdout:
            sys.stderr.write(p.stdout)
        inc = sysconfig.get_paths()["include"]
        p = subprocess.run([_compiler()] + CFLAGS + ["-shared", "-I" + inc, c_file,
                            "-o", os.path.join(tmp, MODULE + suffix)], **run)
        if verbose and p.stdout:
            sys.stderr.write(p.stdout)
    except subprocess.CalledProcessError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError("building %s failed:\n%s%s" % (SOURCE, " ".join(e.cmd) + "\n", e.stdout))
    try:
        os.rename(tmp, dest_dir)  # atomic; a concurrent build that won the race is as good
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(so):
            raise
    for name in os.listdir(out_dir):  # builds of older sources
        if name.startswith("finc_solve-") and name != os.path.basename(dest_dir):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    return so


def load(out_dir=DEFAULT_OUT, force=False, verbose=False):
    """Builds (if needed) and imports the solver module."""
    so = build(out_dir, force, verbose)
    spec = importlib.util.spec_from_file_location(MODULE, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    print(build(args.out, args.force, verbose=True))


if __name__ == "__main__":
    main()

"""The project's whole test run: notebooks clean and exported, the code's shape (tools/code_shape.py), `nbdev_test`
on every notebook, `pytest tests/`
(which includes tests/test_notebooks.py: every notebook under papermill, as a researcher runs it headless).

Prints one closing line `N passed, N failed` (notebooks and pytest tests together) and exits non-zero on any
failure. Run it through `make test`, which creates the virtual environment first.
"""
from __future__ import annotations
import argparse, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, text=True, **kwargs)


def git_state() -> str:
    "Tracked changes and untracked files, to compare before and after clean/export."
    diff = run(['git', 'diff', '--binary'], capture_output=True).stdout
    status = run(['git', 'status', '--porcelain', '--untracked-files=all'], capture_output=True).stdout
    return diff + status


def check_clean_and_exported() -> list[str]:
    "Names of the checks that changed files: nbdev_clean and nbdev_export must be no-ops."
    failed = []
    for tool in ('nbdev_clean', 'nbdev_export'):
        before = git_state()
        if run([str(BIN / tool)]).returncode != 0: failed.append(f'{tool} (crashed)'); continue
        if git_state() != before:
            print(run(['git', 'status', '--short'], capture_output=True).stdout)
            print(f"FAILED: {tool} changed files: commit its result", flush=True)
            failed.append(tool)
    return failed


def check_code_shape() -> list[str]:
    "tools/code_shape.py --check: no long function or file, few long lines, no import of a module above."
    return [] if run([sys.executable, 'tools/code_shape.py', '--check']).returncode == 0 else ['code shape']


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))


def papermill_notebooks() -> list[Path]:
    "Notebooks with a cell tagged `parameters`: tests/test_notebooks.py runs them under papermill, nbdev_test skips them."
    import json
    def tagged(p):
        cells = json.loads(p.read_text(encoding='utf-8'))['cells']
        return any('parameters' in c.get('metadata', {}).get('tags', []) for c in cells)
    return [p for p in notebooks() if tagged(p)]


def run_nbdev_test(flags: str) -> tuple[int, list[str]]:
    "(passed, failed notebook names) of nbdev_test on the library notebooks (each notebook runs once in `make test`)."
    skip = papermill_notebooks()
    nbs = [p for p in notebooks() if p not in skip]
    cmd = [str(BIN / 'nbdev_test'), '--do_print', '--timing',
           '--skip_file_re', '^[_.]' + ''.join(f'|^{re.escape(p.name)}$' for p in skip)]
    if flags: cmd += ['--flags', flags]
    proc = run(cmd, capture_output=True)
    out = proc.stdout + proc.stderr
    print(out, flush=True)
    failed = []
    if 'nbdev Tests Failed On The Following Notebooks' in out:
        tail = out.split('nbdev Tests Failed On The Following Notebooks:')[1]
        failed = re.findall(r'^\s+(\S+\.ipynb)\s*$', tail, flags=re.M)
    elif proc.returncode != 0:
        failed = ['nbdev_test (crashed)']
    return len(nbs) - len([f for f in failed if f.endswith('.ipynb')]), failed


def run_pytest(args: list[str], flags: str) -> tuple[int, int, int]:
    "(passed, failed, skipped) of pytest; `flags` reach tests/test_notebooks.py as GOL_TEST_FLAGS."
    if not list((ROOT / 'tests').glob('test_*.py')): return 0, 0, 0
    proc = run([str(BIN / 'pytest'), 'tests', '-q', '-p', 'no:cacheprovider', '--durations=10', *args], capture_output=True,
               env=dict(os.environ, GOL_TEST_FLAGS=flags))
    out = proc.stdout + proc.stderr
    print(out, flush=True)
    summary = out.strip().splitlines()[-1] if out.strip() else ''
    count = lambda word: sum(int(n) for n in re.findall(rf'(\d+) {word}', summary))
    passed, failed, skipped = count('passed'), count('failed') + count('error'), count('skipped')
    if proc.returncode not in (0, 5) and failed == 0: failed = 1  # pytest itself broke
    return passed, failed, skipped


def disk_use(path: Path) -> int:
    "Bytes under `path` (files only; links not followed)."
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file() and not f.is_symlink())


def main():
    # Notebooks, pytest's tmp_path and torchrun logs all write under TMPDIR: point it at one scratch folder, removed
    # at the end, so that a test run leaves nothing behind (runs used to leave ~5 GB of checkpoints in /tmp each).
    scratch = Path(tempfile.mkdtemp(prefix='gol_nb_test_'))
    os.environ['TMPDIR'] = str(scratch)
    os.environ['GOL_NB_CACHE'] = str(scratch / 'annotation-cache')  # the trainers' annotation caches, not the user's
    try: tests(scratch)
    finally: shutil.rmtree(scratch, ignore_errors=True)


def tests(scratch: Path):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--flags', default='', help="nbdev_test flags to run, e.g. 'slow' or 'slow cuda'")
    ap.add_argument('--skip-clean-check', action='store_true')
    ap.add_argument('pytest_args', nargs='*')
    a = ap.parse_args()
    t0 = time.time()
    failures = [] if a.skip_clean_check else check_clean_and_exported() + check_code_shape()
    t1 = time.time()
    nb_passed, nb_failed = run_nbdev_test(a.flags)
    t2 = time.time()
    py_passed, py_failed, py_skipped = run_pytest(a.pytest_args, a.flags)
    t3 = time.time()
    print(f"temporary files written under {scratch}: {disk_use(scratch) / 2**30:.1f} GiB (removed)")
    passed = nb_passed + py_passed + (0 if a.skip_clean_check else 3 - len(failures))
    failed = len(nb_failed) + py_failed + len(failures)
    print(f"\nnotebooks (nbdev_test; the papermill notebooks run in pytest): {nb_passed} passed, "
          f"{len(nb_failed)} failed {nb_failed or ''}")
    print(f"pytest: {py_passed} passed, {py_failed} failed, {py_skipped} skipped")
    print(f"clean/export/code-shape checks: {'skipped' if a.skip_clean_check else 'failed ' + str(failures) if failures else 'passed'}")
    print(f"wall time: {t3 - t0:.0f} s (clean/export {t1 - t0:.0f} s, nbdev_test {t2 - t1:.0f} s, pytest {t3 - t2:.0f} s)")
    print(f"{passed} passed, {failed} failed")  # the closing line CI reads (skipped tests: the pytest line above)
    if failed: raise SystemExit(1)


if __name__ == '__main__':
    main()

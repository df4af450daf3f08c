"""Measure the library's shape: function lengths, long lines, file sizes and the import layers.

`python tools/code_shape.py` prints the figures; `--check` exits 1 when a limit is broken.
"""
import argparse, ast, statistics, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'gol_nb'
MAX_FUNC, MAX_P90, MAX_FILE, MAX_LONG, WIDTH = 80, 25, 600, 30, 120
# The layers, lowest first: a module imports only from its own layer and those below (the package root, whose
# lazy `from gol_nb import GOL` reaches up, is left out). CONTRIBUTING.md shows the same list.
LAYERS = (('engine', 'activations'), ('losses',), ('data',), ('distribution', 'evaluate'),
          ('evidence', 'params', 'classification', 'detection'), ('mmdet_plugin',),
          ('mmdet_run_config', 'mmdet_run_hooks'), ('mmdet_runner',), ('studies',), ('analysis', 'cli'))
LAYER = {f'gol_nb.{name}': i for i, names in enumerate(LAYERS) for name in names}

def library_files():
    "Exported modules, without the generated index and the mmdetection config files."
    return sorted(p for p in PKG.rglob('*.py') if p.name != '_modidx.py' and 'mmdet_configs' not in p.parts)

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

def function_lengths(tree) -> list:
    return [(n.name, n.end_lineno - n.lineno + 1, n.lineno) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]

def is_generated(line: str) -> bool:
    "nbdev writes the `# %%` cell markers and `__all__`; everything else is hand-written."
    return line.startswith('# %%') or line.startswith('__all__')

def imported_modules(tree, module: str, is_package: bool = False) -> set:
    "Absolute names of the gol_nb modules a module imports (at any depth in the file)."
    out, pkg = set(), module.split('.') + ([''] if is_package else [])  # `from .x` in a package's __init__: its own
    for n in ast.walk(tree):
        if isinstance(n, ast.Import): out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ''
            if n.level: base = '.'.join(pkg[:len(pkg) - n.level] + ([base] if base else []))
            out.add(base)
            out |= {f'{base}.{a.name}' for a in n.names}
        elif isinstance(n, ast.Call) and getattr(n.func, 'attr', getattr(n.func, 'id', '')) == 'import_module':
            out |= {a.value for a in n.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return {m for m in out if m.startswith('gol_nb')}

def unit(module: str) -> str:
    "The layer unit of a module: `gol_nb.engine.files` -> `gol_nb.engine`."
    return '.'.join(module.split('.')[:2])

def upward_imports(module: str, imports: set) -> list:
    "The gol_nb modules `module` imports from a layer above its own (a module missing from LAYERS counts as above)."
    if unit(module) == 'gol_nb': return []
    own = LAYER.get(unit(module), -1)
    return sorted({unit(m) for m in imports if unit(m) != 'gol_nb' and unit(m) != unit(module)
                   and LAYER.get(unit(m), len(LAYERS)) > own})

def measure():
    funcs, long_lines, sizes, upward = [], [], {}, []
    for path in library_files():
        text = path.read_text(); tree = ast.parse(text); mod = module_name(path)
        sizes[mod] = len(text.splitlines())
        funcs += [(mod, *f) for f in function_lengths(tree)]
        long_lines += [(mod, i) for i, l in enumerate(text.splitlines(), 1) if len(l) > WIDTH and not is_generated(l)]
        upward += [(mod, m) for m in upward_imports(mod, imported_modules(tree, mod, path.name == '__init__.py'))]
    return funcs, long_lines, sizes, upward

def report(funcs, long_lines, sizes, upward) -> list:
    "Print the figures; return the broken limits as sentences."
    lens = sorted(f[2] for f in funcs)
    p90 = lens[int(0.9 * (len(lens) - 1))]
    longest = sorted(funcs, key=lambda f: -f[2])[:5]
    print(f'{len(sizes)} modules, {sum(sizes.values())} lines, {len(funcs)} functions')
    print(f'function length median / p90 / max: {statistics.median(lens)} / {p90} / {lens[-1]}')
    print('longest: ' + ', '.join(f'{m}.{n} {k}' for m, n, k, _ in longest))
    print(f'largest files: ' + ', '.join(f'{m} {n}' for m, n in sorted(sizes.items(), key=lambda s: -s[1])[:5]))
    print(f'hand-written lines over {WIDTH} characters: {len(long_lines)}')
    print(f'upward imports: {len(upward)}' + ''.join(f'\n  {m} imports {t}' for m, t in upward))
    broken = [f'a function of {lens[-1]} lines (limit {MAX_FUNC})'] if lens[-1] > MAX_FUNC else []
    if p90 > MAX_P90: broken.append(f'function length p90 {p90} (limit {MAX_P90})')
    broken += [f'{m} has {n} lines (limit {MAX_FILE})' for m, n in sizes.items() if n > MAX_FILE]
    if len(long_lines) > MAX_LONG: broken.append(f'{len(long_lines)} long lines (limit {MAX_LONG})')
    broken += [f'{m} imports {t}, a module above it' for m, t in upward]
    return broken

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='exit 1 when a limit is broken')
    broken = report(*measure())
    for b in broken: print('limit broken:', b)
    sys.exit(1 if broken and ap.parse_args().check else 0)

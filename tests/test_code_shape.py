"tools/code_shape.py, the check `make test` runs on the library's shape: each measure can fail."
import ast, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
import code_shape as cs


def test_function_lengths_count_every_line_of_nested_functions():
    src = "def f():\n    def g():\n        return 1\n    return g\n"
    assert sorted(cs.function_lengths(ast.parse(src))) == [('f', 4, 1), ('g', 2, 2)]


def test_relative_and_dynamic_imports_resolve_to_module_names():
    src = ("from ..engine import atomic_write_json\nfrom . import model\nimport importlib\n"
           "r = importlib.import_module('gol_nb.mmdet_runner')\n")
    got = cs.imported_modules(ast.parse(src), 'gol_nb.detection.train')
    assert {'gol_nb.engine', 'gol_nb.engine.atomic_write_json', 'gol_nb.detection.model',
            'gol_nb.mmdet_runner'} <= got


def test_relative_imports_in_a_package_init_stay_in_the_package():
    assert 'gol_nb.engine.files' in cs.imported_modules(ast.parse('from .files import *'), 'gol_nb.engine', True)
    assert 'gol_nb.files' in cs.imported_modules(ast.parse('from .files import *'), 'gol_nb.engine', False)


def test_upward_imports_found_and_lower_or_same_layer_allowed():
    assert cs.upward_imports('gol_nb.detection.train', {'gol_nb.mmdet_runner', 'gol_nb.engine.files',
                                                        'gol_nb.evidence', 'gol_nb.detection.model'}) == \
        ['gol_nb.mmdet_runner']
    assert cs.upward_imports('gol_nb.cli', {'gol_nb.mmdet_runner', 'gol_nb.detection.train'}) == []
    assert cs.upward_imports('gol_nb.engine.launch', {'gol_nb.losses'}) == ['gol_nb.losses']  # the ground floor
    assert cs.upward_imports('gol_nb.data.lvis', {'gol_nb.newthing'}) == ['gol_nb.newthing']  # unplaced: above


def test_generated_lines_are_not_counted_as_long():
    assert cs.is_generated("__all__ = ['" + 'x' * 200 + "']") and cs.is_generated('# %% ../nbs/01_losses.ipynb 3')
    assert not cs.is_generated('x = 1  # ' + 'y' * 130)


def test_report_names_each_broken_limit(capsys):
    funcs = [('gol_nb.a', 'long', 95, 1)] + [('gol_nb.a', f'f{i}', 5, 1) for i in range(20)]
    broken = cs.report(funcs, [('gol_nb.a', i) for i in range(31)], {'gol_nb.a': 700},
                       [('gol_nb.data', 'gol_nb.studies')])
    assert broken == ['a function of 95 lines (limit 80)', 'gol_nb.a has 700 lines (limit 600)',
                      '31 long lines (limit 30)', 'gol_nb.data imports gol_nb.studies, a module above it']
    assert 'median / p90 / max: 5' in capsys.readouterr().out

"The prepared GPU check (benchmarks/gpu_check.py): its CPU smoke runs every check and writes gpu_check.json."
import json, math, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'gpu_check.json'
    p = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', '--cpu', '--quick', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_quick_cpu_runs_every_check(quick_report):
    r, stdout = quick_report
    assert r['environment']['device'] == 'cpu' and r['quick'] is True
    assert {k: r[k]['status'] for k in ('losses', 'presets', 'eval')} == dict(losses='ok', presets='ok', eval='ok')
    assert 'no check failed' in stdout.splitlines()[-1]


def test_loss_ratios_are_measured(quick_report):
    losses = quick_report[0]['losses']['losses']
    assert losses['bce_with_logits (one-hot)']['ratio'] == 1.0
    for k in ('GumbelBCE (labels)', 'GOL (labels)'):
        assert math.isfinite(losses[k]['ratio']) and losses[k]['ratio'] > 0 and losses[k]['ms'] > 0
        assert losses[k]['saved_ratio'] <= 1.0  # the Gumbel kernel saves only the gradient
    assert quick_report[0]['losses']['target_1.2x_met'] is None  # the target is a GPU figure


def test_preset_steps_fp32_and_bf16_finite(quick_report):
    pr = quick_report[0]['presets']
    assert set(pr['presets']) == {'gumbel_r50_1x', 'gol_r50_lvis_v1_2x'} and pr['all_finite']
    for steps in pr['presets'].values():
        assert set(steps) == {'float32', 'bfloat16'}
        assert all(s['finite'] and s['seconds'] > 0 and s['loss'] > 0 for s in steps.values())


def test_gpu_only_checks_say_why_they_were_skipped(quick_report):
    r = quick_report[0]
    assert r['torchrun']['status'] == 'skipped' and '2 GPUs' in r['torchrun']['skipped']
    assert r['mmdet']['status'] == 'skipped'
    assert 'lvis-api' in ' '.join(r['eval']['output_tail'])  # the side-by-side comparison ran


def test_a_failing_check_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    import gpu_check
    def boom(device, quick): raise ValueError('no such kernel')
    monkeypatch.setitem(gpu_check.CHECKS, 'losses', boom)
    monkeypatch.setitem(gpu_check.CHECKS, 'torchrun', lambda device, quick: dict(skipped='needs 2 GPUs'))
    out = tmp_path / 'g.json'
    assert gpu_check.main(['--cpu', '--only', 'losses', 'torchrun', '--out', str(out)]) == 1
    r = json.loads(out.read_text())
    assert r['losses'] == dict(status='failed', error='ValueError: no such kernel',
                               check_seconds=r['losses']['check_seconds'])
    assert r['torchrun']['status'] == 'skipped'


def test_without_a_gpu_the_full_mode_says_so(tmp_path):
    import gpu_check, torch
    if torch.cuda.is_available(): pytest.skip('a GPU is visible')
    with pytest.raises(SystemExit, match='no GPU is visible'): gpu_check.main(['--out', str(tmp_path / 'g.json')])
    assert not (tmp_path / 'g.json').exists()

"Run-folder policy (gol_nb.engine): atomic files, checksums, resume checks, guards, signals, devices, launcher."
import dataclasses, errno, json, os, signal, stat, subprocess, sys, textwrap, time, warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
import pytest
import torch
import gol_nb.engine as E
import gol_nb.engine.files as engine_files, gol_nb.engine.logs as engine_logs
from gol_nb.engine import (RunConfig, prepare_run, run_status, save_checkpoint, load_checkpoint, find_checkpoint,
                           latest_checkpoint, config_to_dict, CheckpointError, NonFiniteError, RunFolderError,
                           ConfigMismatchError, RunGuard, RunInterrupted, require_devices, DeviceError, JSONLLogger,
                           read_jsonl, atomic_write_json, launch_torchrun, RankFailedError, remove_orphans,
                           check_state_shapes, field_docs, config_help, trainer_parser, parse_trainer_args,
                           apply_overrides, scaled_lr)


@dataclass
class Cfg(RunConfig):
    loss: str = 'gol'        # the loss
    lr: float = 0.02         # learning rate
    batch_size: int = 2      # images per process
    log_every: int = 20      # iterations between log lines
    FREE_KEYS: ClassVar[tuple] = RunConfig.FREE_KEYS + ('log_every',)
    LOCKED_KEYS: ClassVar[tuple] = ('loss',)


def _ckpt(run, cfg, tag='iter_1', world=1, w=None):
    w = torch.ones(3) if w is None else w
    return save_checkpoint(run, {'model': {'w': w}, 'optimizer': {}, 'config': config_to_dict(cfg), 'world_size': world},
                           tag)


@pytest.fixture(autouse=True)
def _let_go_of_run_folders():
    "Each test's run folders are let go at its end (a trainer does it in cleanup_distributed)."
    yield
    E.unlock_run_folder()


# --- atomic files ----------------------------------------------------------------------------------------------
def test_atomic_files_keep_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / 'm.json', {'a': 1})
        save_checkpoint(tmp_path, {'model': {}}, 'iter_1')
    finally: os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~engine_files._UMASK
    if engine_files._UMASK == 0o022:  # the default umask: what `open` gives, not mkstemp's 0600
        for f in [p, tmp_path / 'checkpoints' / 'iter_1.pth', tmp_path / 'checkpoints' / 'last']:
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_disk_full_names_enospc_and_path_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {'model': {'w': torch.ones(2)}}, 'iter_1')
    real = torch.save
    def full(obj, f):  # torch writes part of the file, then the disk is full
        f.write(b'PK\x03\x04 partial'); raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(OSError, match=r'ENOSPC\) while writing .*iter_2\.pth') as e:
        save_checkpoint(tmp_path, {'model': {'w': torch.ones(2)}}, 'iter_2')
    assert e.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, 'save', real)
    ck = tmp_path / 'checkpoints'
    assert sorted(p.name for p in ck.iterdir()) == ['iter_1.pth', 'iter_1.pth.sha256', 'last']  # no temporary left
    assert (ck / 'last').read_text() == 'iter_1.pth' and load_checkpoint(ck / 'iter_1.pth')['model']['w'].sum() == 2


def test_disk_full_log_survives_and_torn_line_is_skipped(tmp_path, monkeypatch):
    lg = JSONLLogger(tmp_path / 'log.jsonl')
    lg.log({'iteration': 1})
    real = os.write
    def half(fd, data):  # the disk fills half-way through a record
        n = real(fd, bytes(data[:len(data) // 2])); monkeypatch.setattr(engine_logs.os, 'write', real)
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(engine_logs.os, 'write', half)
    with pytest.raises(OSError, match=r'ENOSPC\) while appending to .*log\.jsonl'): lg.log({'iteration': 2, 'loss': 0.5})
    lg.log({'iteration': 3})  # space again: the next record starts on its own line
    raw = (tmp_path / 'log.jsonl').read_text().splitlines()
    assert raw[0] == '{"iteration": 1}' and raw[2] == '{"iteration": 3}' and not raw[1].endswith('}')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert [r['iteration'] for r in read_jsonl(tmp_path / 'log.jsonl')] == [1, 3]
    assert any('skipped 1 torn line(s) (line 2)' in str(x.message) for x in w)


@pytest.fixture
def small_disk(tmp_path):
    "A real 256 KiB tmpfs (needs root; skipped elsewhere)."
    d = tmp_path / 'full'; d.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', str(d)],
                                           capture_output=True).returncode != 0:
        pytest.skip('cannot mount a small tmpfs here')
    yield d
    subprocess.run(['umount', str(d)])


def test_real_full_disk(small_disk):
    run = small_disk / 'run'
    save_checkpoint(run, {'model': {'w': torch.ones(100)}}, 'iter_1')
    with pytest.raises(OSError, match=r'ENOSPC\) while writing .*iter_2\.pth'):
        save_checkpoint(run, {'model': {'w': torch.ones(200_000)}}, 'iter_2')
    assert (run / 'checkpoints' / 'last').read_text() == 'iter_1.pth'
    lg, n = JSONLLogger(run / 'log.jsonl'), 0
    with pytest.raises(OSError, match='ENOSPC'):
        while True: lg.log({'i': n, 'pad': 'x' * 300}); n += 1
    (run / 'checkpoints' / 'iter_1.pth').unlink()  # the user frees space
    lg.log({'i': 'after'})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always'); recs = read_jsonl(run / 'log.jsonl')
    assert recs[-1] == {'i': 'after'} and len(recs) == n + 1


# --- checkpoints -----------------------------------------------------------------------------------------------
def test_checksum_stored_verified_and_fallback(tmp_path):
    for i in range(3): save_checkpoint(tmp_path, {'it': i, 'model': {'w': torch.full((50,), float(i))}}, f'iter_{i}')
    ck = tmp_path / 'checkpoints'
    line = (ck / 'iter_2.pth.sha256').read_text()
    assert line.split()[1] == 'iter_2.pth' and len(line.split()[0]) == 64  # sha256sum's format
    p = ck / 'iter_2.pth'; b = bytearray(p.read_bytes()); b[len(b) // 2] ^= 0xFF; p.write_bytes(bytes(b))  # one bit rot
    with pytest.raises(CheckpointError, match='checksum mismatch'): load_checkpoint(p)
    q = ck / 'iter_1.pth'; q.write_bytes(q.read_bytes()[:200])  # the one before truncated too
    path, state, skipped = find_checkpoint(tmp_path)
    assert path.name == 'iter_0.pth' and state['it'] == 0
    assert [s.split(':')[0] for s in skipped] == ['skipped iter_2.pth', 'skipped iter_1.pth']
    assert latest_checkpoint(tmp_path).name == 'iter_0.pth'


def test_resume_skips_corrupt_latest_and_says_which(tmp_path, capsys):
    cfg = Cfg(output_dir=str(tmp_path / 'run'))
    _ckpt(cfg.output_dir, cfg, 'iter_1', w=torch.ones(3)); _ckpt(cfg.output_dir, cfg, 'iter_2', w=torch.full((3,), 2.))
    p = Path(cfg.output_dir) / 'checkpoints' / 'iter_2.pth'; p.write_bytes(p.read_bytes()[:-10])
    st = prepare_run(dataclasses.replace(cfg, resume=True))
    assert st.path.name == 'iter_1.pth' and st.checkpoint['model']['w'].tolist() == [1., 1., 1.]
    assert len(st.skipped) == 1 and 'iter_2.pth' in st.skipped[0]
    assert 'skipped iter_2.pth' in capsys.readouterr().err
    for q in (Path(cfg.output_dir) / 'checkpoints').glob('*.pth'): q.write_bytes(b'garbage')
    with pytest.raises(RunFolderError, match='no checkpoint .* can be read'): prepare_run(dataclasses.replace(cfg, resume=True))


def test_nonfinite_checkpoint_never_latest(tmp_path):
    save_checkpoint(tmp_path, {'model': {'w': torch.ones(2)}}, 'iter_1')
    for bad in (float('nan'), float('inf'), -float('inf')):
        with pytest.raises(NonFiniteError, match='non-finite weights in layer.w'):
            save_checkpoint(tmp_path, {'model': {'layer.w': torch.tensor([1., bad])}}, 'iter_2')
    assert (tmp_path / 'checkpoints' / 'last').read_text() == 'iter_1.pth'
    assert not (tmp_path / 'checkpoints' / 'iter_2.pth').exists()


def test_orphans_removed_at_start_not_in_a_dry_check(tmp_path):
    cfg = Cfg(output_dir=str(tmp_path / 'run'), resume=True)
    _ckpt(cfg.output_dir, cfg)
    orphans = [Path(cfg.output_dir) / '.metrics.json.ab12.tmp', Path(cfg.output_dir) / 'checkpoints' / '.iter_2.pth.x9.tmp']
    for o in orphans: o.write_bytes(b'half')
    prepare_run(cfg, dry=True)
    assert all(o.exists() for o in orphans)
    st = prepare_run(cfg)
    assert not any(o.exists() for o in orphans) and sorted(st.removed) == sorted(orphans)


# --- the run-folder policy -------------------------------------------------------------------------------------
@pytest.mark.parametrize('what', ['checkpoints', 'log.jsonl', 'metrics.json'])
def test_new_run_refused_in_a_used_folder(tmp_path, what):
    run = tmp_path / 'run'; cfg = Cfg(output_dir=str(run))
    if what == 'checkpoints': _ckpt(run, cfg)
    else: run.mkdir(); (run / what).write_text('{}\n')
    with pytest.raises(RunFolderError, match=f'already holds a run \\({what}.*add resume=true'): prepare_run(cfg)


def test_resume_on_empty_folder_starts_fresh_and_writes_config_only_at_commit(tmp_path):
    cfg = Cfg(output_dir=str(tmp_path / 'run'), resume=True)
    st = prepare_run(cfg)
    assert not st.resumed and not (tmp_path / 'run').exists()
    lg = JSONLLogger(tmp_path / 'run' / 'log.jsonl'); st.commit(cfg, lg)
    assert (tmp_path / 'run' / 'config.yaml').is_file() and lg.read()[0]['event'] == 'start'


@pytest.mark.parametrize('change,refused,msg', [
    (dict(loss='sigmoid'), True, "loss 'gol' -> 'sigmoid' (these define the model"),
    (dict(lr=0.01), True, 'accept_changes=[lr]'),
    (dict(batch_size=4), True, 'accept_changes=[batch_size]'),
    (dict(seed=1), True, 'accept_changes=[seed]'),
    (dict(lr=0.01, accept_changes=['lr']), False, ''),
    (dict(lr=0.01, batch_size=4, accept_changes=['schedule']), False, ''),
    (dict(loss='sigmoid', accept_changes=['schedule', 'loss']), True, 'cannot change on resume'),
    (dict(log_every=1, device='cpu', checkpoint_minutes=1.0), False, ''),  # bookkeeping may change
])
def test_resume_checks_the_config_before_writing(tmp_path, change, refused, msg):
    run = tmp_path / 'run'; cfg = Cfg(output_dir=str(run))
    _ckpt(run, cfg); (run / 'config.yaml').write_text('original\n')
    new = dataclasses.replace(cfg, resume=True, **change)
    if refused:
        with pytest.raises(ConfigMismatchError, match=msg.replace('[', r'\[').replace('(', r'\(')): prepare_run(new)
        assert (run / 'config.yaml').read_text() == 'original\n'  # never rewritten by a refused resume
    else:
        st = prepare_run(new)
        assert st.resumed and set(st.changes) <= set(change)
        assert (run / 'config.yaml').read_text() == 'original\n'  # not yet: only commit writes it
        lg = JSONLLogger(run / 'log.jsonl'); st.commit(new, lg)
        assert 'original' not in (run / 'config.yaml').read_text()
        assert lg.read()[-1]['event'] == 'resume'


def test_resume_with_other_process_count(tmp_path):
    run = tmp_path / 'run'; cfg = Cfg(output_dir=str(run))
    _ckpt(run, cfg, world=4)
    with pytest.raises(ConfigMismatchError, match='world_size 4 -> 2'): prepare_run(dataclasses.replace(cfg, resume=True), world_size=2)
    st = prepare_run(dataclasses.replace(cfg, resume=True, accept_changes=['world_size']), world_size=2)
    assert st.changes == {'world_size': (4, 2)}


def test_model_shapes_refused():
    m = torch.nn.Linear(4, 3)
    check_state_shapes(m, m.state_dict())
    with pytest.raises(ConfigMismatchError, match=r'weight \(5, 4\) vs \(3, 4\)'):
        check_state_shapes(m, {'weight': torch.ones(5, 4), 'bias': torch.ones(3)})
    with pytest.raises(ConfigMismatchError, match='missing in checkpoint: bias'): check_state_shapes(m, {'weight': m.weight})


def test_run_status(tmp_path):
    cfg = Cfg(output_dir=str(tmp_path))
    assert run_status(tmp_path / 'nothing') == 'new'
    (tmp_path / 'log.jsonl').write_text('')
    assert run_status(tmp_path) == 'new'
    _ckpt(tmp_path, cfg); assert run_status(tmp_path) == 'interrupted'
    (tmp_path / 'metrics.json').write_text('{}'); assert run_status(tmp_path) == 'finished'


# --- the loop guard ----------------------------------------------------------------------------------------------
def test_guard_catches_nonfinite_on_the_iteration_before_the_step():
    w = torch.nn.Parameter(torch.ones(3)); opt = torch.optim.SGD([w], lr=0.1)
    with RunGuard(None, hint='lower the lr') as g:
        for it in range(1, 6):
            opt.zero_grad(); loss = (w * (float('nan') if it == 4 else 1.)).sum(); loss.backward()
            if it == 4:
                with pytest.raises(NonFiniteError, match='non-finite loss at iteration 4 .*lower the lr'):
                    g.check(it, loss, {'loss_cls': loss}, [w])
                break
            g.check(it, loss, {'loss_cls': loss}, [w]); opt.step()
    assert torch.isfinite(w).all() and w.tolist() == pytest.approx([0.7] * 3)  # 3 steps taken, not the 4th
    w.grad = torch.tensor([1., float('inf'), 0.])
    with pytest.raises(NonFiniteError, match='non-finite gradients at iteration 9'): RunGuard(None).check(9, w.sum().detach(), None, [w])
    # the norm gradient clipping returned is the one checked (it is not computed again)
    norm = torch.nn.utils.clip_grad_norm_([w], 10.)
    with pytest.raises(NonFiniteError, match='non-finite gradients at iteration 10'):
        RunGuard(None).check(10, w.sum().detach(), None, [w], grad_norm=norm)
    w.grad = torch.ones(3)
    RunGuard(None).check(11, w.sum().detach(), None, [w], grad_norm=torch.nn.utils.clip_grad_norm_([w], 10.))


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_guard_turns_a_signal_into_a_checkpoint_request(sig):
    w = torch.nn.Parameter(torch.ones(2))
    old = signal.getsignal(sig)
    with RunGuard(RunConfig(checkpoint_minutes=0)) as g:
        os.kill(os.getpid(), sig); time.sleep(0.05)
        loss = w.sum(); loss.backward(); g.check(7, loss, None, [w])
        assert g.stop_requested and g.save_due(7) and g.signum == sig
        if sig == signal.SIGINT:  # a second Ctrl-C stops at once
            with pytest.raises(KeyboardInterrupt): os.kill(os.getpid(), sig); time.sleep(0.05)
    assert signal.getsignal(sig) == old
    e = RunInterrupted(sig, 7, 'iter_7.pth')
    assert e.exit_code == 128 + sig and 'resume=true' in str(e)


def test_guard_time_and_iteration_cadence():
    g = RunGuard(RunConfig(checkpoint_interval=0, checkpoint_minutes=0.001))  # 60 ms
    loss = torch.tensor(1.)
    g.check(1, loss); assert not g.save_due(1)
    time.sleep(0.1); g.check(2, loss); assert g.save_due(2)
    g.saved(); g.check(3, loss); assert not g.save_due(3)
    g = RunGuard(RunConfig(checkpoint_interval=3, checkpoint_minutes=0))
    assert [g.save_due(i) for i in range(1, 7)] == [False, False, True, False, False, True]


# --- devices ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('nproc,device,gpus,msg', [
    (1, 'auto', True, 'no GPU is visible'),        # gpus=1 on a CPU machine
    (2, 'auto', True, 'no GPU is visible'),        # gpus=2
    (8, 'auto', False, '8 process(es) on GPUs'),   # --nproc 8
    (1, 'cuda', False, 'add device=cpu'),
    (2, 'cpu', True, 'for CPU processes use --nproc 2 device=cpu'),
])
def test_gpu_requests_without_gpus_fail_at_once(nproc, device, gpus, msg):
    with pytest.raises(DeviceError, match=msg.replace('(', r'\(').replace(')', r'\)')):
        require_devices(nproc, device, gpus, visible=0)


def test_cpu_processes_when_asked_for():
    assert require_devices(8, 'cpu', visible=0) == 'cpu' and require_devices(1, 'auto', visible=0) == 'cpu'
    assert require_devices(2, 'auto', True, visible=2) == 'cuda'


# --- the launcher ---------------------------------------------------------------------------------------------
PROBE = '''
import sys, time, torch, torch.distributed as dist
from gol_nb.engine import init_distributed, cleanup_distributed, RunGuard, RunInterrupted, RunConfig
mode = sys.argv[1]
info = init_distributed('cpu', timeout=120)
print(f"rank {info.rank} up", flush=True)
w = torch.nn.Parameter(torch.ones(2))
try:
    with RunGuard(RunConfig(checkpoint_minutes=0), info) as g:
        for it in range(1, 10**6):
            if mode == 'hang' and info.rank == 1 and it == 3: time.sleep(3600)  # stuck loading its batch
            g.beat(it)
            if mode == 'fail' and info.rank == 1 and it == 2: raise ValueError('bad annotation in rank 1')
            loss = (w * it).sum(); loss.backward(); dist.all_reduce(w.grad)
            g.check(it, loss, None, [w]); w.grad = None
            print(f"rank {info.rank} iteration {it}", flush=True)
            if g.stop_requested:
                print(f"rank {info.rank} checkpoint at {it}", flush=True); raise RunInterrupted(g.signum, it)
            time.sleep(0.2)
            if mode in ('fail', 'hang') and it > 200: break
except RunInterrupted as e:
    print(e, flush=True); cleanup_distributed(); sys.exit(e.exit_code)
cleanup_distributed()
'''


@pytest.fixture
def probe(tmp_path):
    d = tmp_path / 'mod'; d.mkdir(); (d / '_gol_probe.py').write_text(PROBE)
    return {'PYTHONPATH': os.pathsep.join([str(d), os.environ.get('PYTHONPATH', '')])}


def test_failing_rank_traceback_quoted_from_its_own_log(tmp_path, probe):
    with pytest.raises(RankFailedError) as e:
        launch_torchrun('_gol_probe', ['fail'], 2, env=probe, log=lambda s: None, run_dir=tmp_path)
    msg = str(e.value)
    assert 'rank 1 exited' in msg and "ValueError: bad annotation in rank 1" in msg and 'rank1.log' in msg
    assert 'Traceback' in msg and 'rank 0 iteration' not in msg  # rank 1's own traceback, not interleaved output
    assert 'rank 0 up' in (tmp_path / 'logs' / 'rank0.log').read_text()
    assert 'rank 1 up' in (tmp_path / 'logs' / 'rank1.log').read_text()


def test_hung_rank_detected_named_and_stack_quoted(tmp_path, probe):
    t0 = time.time()
    with pytest.raises(RankFailedError) as e:
        launch_torchrun('_gol_probe', ['hang'], 2, env=probe, log=lambda s: None, run_dir=tmp_path, hang_timeout=4)
    took, msg = time.time() - t0, str(e.value)
    assert 'rank 1 made no progress for 4 s' in msg and 'other ranks reached iteration 3' in msg, msg
    assert 'time.sleep(3600)' in msg or '_gol_probe.py", line 11' in msg, msg  # its stack, dumped on SIGUSR1
    assert took < 40, took


def test_sigterm_on_the_launcher_checkpoints_every_rank_and_exits_cleanly(tmp_path, probe):
    code = textwrap.dedent(f'''
        import sys
        from gol_nb.engine import launch_torchrun, RunInterrupted
        try: launch_torchrun('_gol_probe', ['run'], 2, env={probe!r}, run_dir={str(tmp_path)!r})
        except RunInterrupted as e: print('LAUNCHER', e, flush=True); sys.exit(e.exit_code)
    ''')
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and 'rank 0 iteration 3' not in (tmp_path / 'logs' / 'rank0.log').read_text() \
            if (tmp_path / 'logs' / 'rank0.log').exists() else time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 128 + signal.SIGTERM, out
    assert 'LAUNCHER stopped by SIGTERM' in out
    for r in (0, 1):
        log = (tmp_path / 'logs' / f'rank{r}.log').read_text()
        assert f'rank {r} checkpoint at' in log and 'stopped by SIGTERM' in log, log
    at = {r: int((tmp_path / 'logs' / f'rank{r}.log').read_text().split(f'rank {r} checkpoint at ')[1].split()[0]) for r in (0, 1)}
    assert at[0] == at[1]  # both ranks stopped on the same iteration boundary


# --- several nodes (tests/test_multinode.py trains over two) -------------------------------------------------------
def _stub_torchrun(monkeypatch, started):
    "torchrun replaced by `true`: what each launch would have started is appended to `started`."
    import gol_nb.engine.launch as L
    def start(module, args, launch, logs, env):
        started.append((launch.torchrun_args(), args, dict(env or {})))
        return subprocess.Popen(['true'], stdout=subprocess.PIPE)
    monkeypatch.setattr(L, '_start_torchrun', start)


def test_a_node_other_than_0_takes_no_lock_and_writes_only_its_ranks_logs(tmp_path, monkeypatch):
    import fcntl
    run = tmp_path / 'run'; run.mkdir(); cfg = Cfg(output_dir=str(run))
    started = []; _stub_torchrun(monkeypatch, started)
    fd = os.open(run / '.lock', os.O_RDWR | os.O_CREAT); os.write(fd, b'pid 1 on host node0\n')
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # node 0's launcher holds the shared folder
    try:
        node1 = E.Launch(1, nnodes=2, node_rank=1, master_addr='127.0.0.1', master_port=29511)
        assert E.launch_run(cfg, 'no.such.module', node1) == {}
        with pytest.raises(RunFolderError, match='in use by another trainer \\(pid 1 on host node0\\)'):
            E.launch_run(cfg, 'no.such.module', dataclasses.replace(node1, node_rank=0))  # node 0 would lock
    finally: os.close(fd)
    (args, argv, env), = started
    assert args == ['--nnodes=2', '--node_rank=1', '--master_addr=127.0.0.1', '--master_port=29511',
                    '--nproc_per_node=1']
    assert argv[0] == '--config' and run not in Path(argv[1]).parents and not Path(argv[1]).exists()  # a temp copy
    assert E.LOCK_ENV not in env  # its ranks hold no lock either
    assert sorted(str(p.relative_to(run)) for p in run.rglob('*')) == ['.lock', 'logs']  # nothing written


def test_train_or_launch_checks_the_run_folder_on_node_0_only_with_the_world_size(tmp_path, monkeypatch):
    started, checked = [], []; _stub_torchrun(monkeypatch, started)
    cfg = Cfg(output_dir=str(tmp_path / 'run'), device='cpu')
    (tmp_path / 'run').mkdir(); (tmp_path / 'run' / 'metrics.json').write_text('{"AP": 0.5}')  # what rank 0 wrote
    two = lambda k: E.Launch(2, nnodes=2, node_rank=k, master_addr='h', master_port=1)
    check = lambda c, n: checked.append(n)
    assert E.train_or_launch(cfg, None, 'no.such.module', two(1), check) == {}
    assert checked == []
    assert E.train_or_launch(cfg, None, 'no.such.module', two(0), check) == {'AP': 0.5}
    assert checked == [4] and [s[0][:2] for s in started] == [['--nnodes=2', '--node_rank=1'],
                                                              ['--nnodes=2', '--node_rank=0']]
    E.train_or_launch(cfg, None, 'no.such.module', 2, check)
    assert started[-1][0] == ['--standalone', '--nproc_per_node=2'] and checked == [4, 2]  # one node: as before


def test_each_node_watches_only_its_own_ranks(tmp_path):
    import gol_nb.engine.launch as L
    for r in range(4): (tmp_path / f'rank{r}.heartbeat.json').write_text(json.dumps({'pid': 10 + r, 'iteration': r}))
    assert sorted(L._heartbeats(tmp_path, E.Launch(2, 2, 1, 'h', 1).ranks)) == [2, 3]  # pids of node 1's machine only


@pytest.mark.parametrize('argv,says', [
    (['--nnodes', '2', '--node-rank', '2', '--master-addr', 'h', '--master-port', '1'], '--node-rank 2 is outside'),
    (['--nnodes', '2', '--node-rank', '-1', '--master-addr', 'h', '--master-port', '1'], '--node-rank -1 is outside'),
    (['--nnodes', '2', '--master-port', '29500'], '--nnodes 2 needs --master-addr:'),
    (['--nnodes', '2', '--master-addr', 'h'], '--nnodes 2 needs --master-port:'),
    (['--nnodes', '0'], '--nnodes: expected >= 1, got 0'),
    (['--master-port', '29500'], '--master-port given with --nnodes 1'),
    (['--nnodes', '2', '--master-addr', 'h', '--master-port', '70000'], '--master-port: expected a TCP port'),
])
def test_bad_node_flags_are_one_line_naming_the_flag(capsys, argv, says):
    p = trainer_parser('demo', 'demo', Cfg)
    with pytest.raises(SystemExit) as e: parse_trainer_args(p, argv, lambda c, o: apply_overrides(Cfg(), o), {})
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and err.startswith('demo: error: ') and says in err, err


# --- the command lines' shared parts ------------------------------------------------------------------------------
def test_field_docs_and_help_list_every_key():
    docs = field_docs(Cfg)
    assert docs['lr'] == 'learning rate' and docs['hang_timeout'].startswith('seconds without progress')
    h = config_help(Cfg)
    for f in dataclasses.fields(Cfg): assert f'  {f.name}=' in h, f.name
    assert 'checkpoint_minutes=15.0' in h and 'accept_changes=[]' in h


def test_cli_errors_are_one_line(capsys):
    p = trainer_parser('demo', 'demo', Cfg)
    build = lambda c, o: apply_overrides(Cfg(), o)
    for argv in (['lr=fast'], ['nokey=1'], ['--nproc', '0'], ['--nproc', '2', '--gpus', '4'], ['lr']):
        with pytest.raises(SystemExit) as e: parse_trainer_args(p, argv, build, {})
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and err.startswith('demo: error: '), (argv, err)
    with pytest.raises(SystemExit) as e: parse_trainer_args(p, ['--list-presets'], build, {'a': 'first', 'bb': 'second'})
    assert e.value.code == 0 and capsys.readouterr().out.splitlines() == ['a   first', 'bb  second']
    cfg, a = parse_trainer_args(p, ['--gpus', '2', 'lr=0.1'], build, {})
    assert (a.nproc, a.gpus, cfg.lr) == (2, 2, 0.1)


def test_scaled_lr_says_why():
    lr, why = scaled_lr(0.02, 8, 16)
    assert lr == pytest.approx(0.01) and 'lr 0.01 = base_lr 0.02 x total batch 8 / base_batch 16' in why


def test_rank_logs_of_an_earlier_launch_count_in_the_launchers_check(tmp_path):
    cfg = Cfg(output_dir=str(tmp_path / 'run'))
    (tmp_path / 'run' / 'logs').mkdir(parents=True); (tmp_path / 'run' / 'logs' / 'rank0.log').write_text('old\n')
    with pytest.raises(RunFolderError, match=r'already holds a run \(logs\)'): prepare_run(cfg, dry=True)
    assert not prepare_run(cfg).resumed  # the ranks of this launch, after the launcher wrote logs/
    assert not prepare_run(dataclasses.replace(cfg, resume=True), dry=True).resumed


# --- rough edges (issue 21) --------------------------------------------------------------------------------------
@pytest.mark.parametrize('ckpt,says', [
    ({'model': {'w': torch.ones(3)}, 'config': {}}, "lacks 'optimizer'"),
    ([torch.ones(3)], 'not a training checkpoint (a list'),
    ({'model': {'w': torch.tensor([1., float('nan'), 1.])}, 'optimizer': {}}, 'non-finite weights (NaN/Inf) in w'),
])
def test_resume_refuses_a_checkpoint_it_cannot_use_naming_the_file(tmp_path, ckpt, says):
    cfg = Cfg(output_dir=str(tmp_path / 'run'), resume=True)
    (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
    torch.save(ckpt, tmp_path / 'run' / 'checkpoints' / 'iter_7.pth')  # copied in by hand: no .sha256
    for dry in (True, False):
        with pytest.raises(RunFolderError) as e: prepare_run(cfg, dry=dry)
        assert says in str(e.value) and str(tmp_path / 'run' / 'checkpoints' / 'iter_7.pth') in str(e.value)
        assert 'base_lr' not in str(e.value)


def test_output_dir_that_is_a_file_is_a_sentence(tmp_path):
    (tmp_path / 'f').write_text('x')
    for resume in (False, True):
        with pytest.raises(RunFolderError, match='output_dir .*/f is a file, not a folder'):
            prepare_run(Cfg(output_dir=str(tmp_path / 'f'), resume=resume))


_HOLDER = """
import sys, time
from gol_nb.engine import RunConfig, prepare_run
cfg = RunConfig(output_dir=sys.argv[1], resume=True)
st = prepare_run(cfg); st.commit(cfg)
print('holding', flush=True); time.sleep(120)
"""


def test_one_trainer_per_run_folder_and_a_dead_holders_lock_does_not_block(tmp_path):
    run = tmp_path / 'run'; cfg = Cfg(output_dir=str(run))
    _ckpt(run, cfg)
    holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])})
    try:
        assert 'holding' in [holder.stdout.readline().strip() for _ in range(2)]  # after 'resuming ...'
        for dry in (True, False):  # the launcher's check and the trainer both stop at once
            with pytest.raises(RunFolderError) as e: prepare_run(dataclasses.replace(cfg, resume=True), dry=dry)
            assert f'output_dir {run.resolve()} is in use by another trainer (pid {holder.pid} on host ' in str(e.value)
        with pytest.raises(RunFolderError, match='in use by another trainer'):
            E.launch_run(dataclasses.replace(cfg, resume=True), 'gol_nb.no_such_module', 2)
    finally:
        holder.kill(); holder.wait()
    st = prepare_run(dataclasses.replace(cfg, resume=True))  # the holder died: its lock is gone with it
    assert st.resumed and f'pid {os.getpid()} ' in (run / '.lock').read_text()
    E.unlock_run_folder(run)
    assert not (run / '.lock').exists()  # a run that let go leaves no lock file behind
    E.lock_run_folder(run); E.unlock_run_folder(run)  # and the folder can be locked again


@pytest.mark.parametrize('text,says', [
    ('lr: [0.1, 0.2\nseed: 1\n', 'not valid YAML at line 2, column 5'),
    ('lr: 0.1\n\tseed: 1\n', 'not valid YAML at line 2, column 1'),
    (b'\x80\x81PK\x03\x04binary', 'not a text config file'),
])
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, says):
    f = tmp_path / 'my config.yaml'
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as e: E.load_config(Cfg, f)
    assert str(e.value).startswith(f'{f}: ') and says in str(e.value)
    if b'[' in f.read_bytes(): assert 'flow sequence opened at line 1, column 5' in str(e.value)
    if b'\t' in f.read_bytes(): assert 'spaces, not tabs' in str(e.value)


def test_type_errors_say_what_was_expected_and_misspellings_the_nearest_key():
    @dataclass
    class C(RunConfig):
        epochs: int = 2             # epochs
        nms_thresh: float | None = None  # NMS IoU
        scales: list[int] = dataclasses.field(default_factory=list)  # sizes
    with pytest.raises(ValueError, match="nms_thresh: expected a number or null, got 'abc'"):
        apply_overrides(C(), ['nms_thresh=abc'])
    with pytest.raises(ValueError, match=r"scales: expected a list of integers, got \['a', 'b'\]"):
        apply_overrides(C(), ['scales=[a, b]'])
    assert apply_overrides(C(), ['nms_thresh=1e-3']).nms_thresh == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ValueError) as e: apply_overrides(C(), ['epocs=3'])
    assert str(e.value) == "C: unknown key 'epocs': did you mean 'epochs'?"
    with pytest.raises(ValueError) as e: apply_overrides(C(), ['zzzz=3'])
    assert "unknown key 'zzzz'" in str(e.value) and 'output_dir' not in str(e.value)  # no list of every key


def test_guard_warns_once_when_the_loss_or_gradient_explodes(capsys, tmp_path):
    w = torch.nn.Parameter(torch.ones(2)); lg = JSONLLogger(tmp_path / 'log.jsonl')
    with RunGuard(None, hint='lower base_lr (now 10000) or set grad_clip (now 10)', signals=False, logger=lg) as g:
        for it, scale in enumerate([1.0, 30.0, 2e7, 3e7], 1):
            w.grad = None; loss = (w * scale).sum(); loss.backward()
            g.check(it, loss, None, [w], torch.nn.utils.clip_grad_norm_([w], 10.0))  # the pre-clip norm
    err = capsys.readouterr().err
    assert err.count('warning: ') == 1 and 'exploded' in err and 'at iteration 3' in err
    assert 'base_lr (now 10000)' in err and 'grad_clip (now 10)' in err
    assert [r['iteration'] for r in lg.read() if r.get('event') == 'warning'] == [3]
    with RunGuard(None, signals=False) as g:  # an ordinary run: no warning
        for it, v in enumerate([5.0, 2.0, 8.0, 0.5], 1): g.check(it, torch.tensor(v))
    assert g.warned is None and 'warning' not in capsys.readouterr().err


def test_a_loss_refusing_nan_logits_becomes_an_error_with_iteration_and_hint():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(NonFiniteError) as e:
        with RunGuard(None, hint='lower lr (now 1e+08)', signals=False) as g:
            g.beat(3); loss = w.sum(); loss.backward(); g.check(3, loss, None, [w])
            with torch.no_grad(): w.mul_(float('inf'))  # the step of iteration 3 (lr 1e8) blew the weights up
            g.stepped(3, [w]); g.beat(4)
            raise ValueError('SoftmaxCE: logits contain NaN')  # what the loss says on iteration 4
    assert 'non-finite weights after the optimizer step of iteration 3' in str(e.value)
    assert 'lower lr (now 1e+08)' in str(e.value)


def test_cli_runtime_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    p = trainer_parser('demo', 'demo', Cfg)
    def run(cfg, n): raise RuntimeError("pretrained='IMAGENET1K_V1': could not get the weights.\nOffline?")
    a = p.parse_args([])
    with pytest.raises(SystemExit) as e: E.run_trainer_cli(p, a, Cfg(device='cpu'), lambda c, n: None, run)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count('\n') == 1 and err.startswith("demo: error: RuntimeError: pretrained=")
    with pytest.raises(RuntimeError, match='Offline'):
        E.run_trainer_cli(p, p.parse_args(['--debug']), Cfg(device='cpu'), lambda c, n: None, run)
    summary = E.RankFailedError('long\ntraceback', 'rank 1 of 2 failed: NonFiniteError: x (its traceback: r1.log)')
    def fails(cfg, n): raise summary
    with pytest.raises(SystemExit): E.run_trainer_cli(p, a, Cfg(device='cpu'), lambda c, n: None, fails)
    assert capsys.readouterr().err == ('demo: error: rank 1 of 2 failed: NonFiniteError: x (its traceback: r1.log) '
                                       '(--debug shows the traceback)\n')

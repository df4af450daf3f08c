"The shared annotation cache (issue 18): built once by concurrent processes, rebuilt when changed or corrupted."
import json, os, pickle, stat, subprocess, sys, textwrap, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from gol_nb.data import LVISDetection, detection_collate
from gol_nb.data.cache import annotation_cache_dir, open_cache, CacheError
from gol_nb.data.lvis import tiny_lvis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lvis_file(tmp_path, monkeypatch):
    "A small LVIS file (polygons, a compressed RLE, an unusable box) in a folder of its own, images, a cache folder."
    monkeypatch.setenv('GOL_NB_CACHE', str(tmp_path / 'cache'))
    d = tiny_lvis(6, 3)
    for im in d['images']: im.update(height=40, width=60)
    d['annotations'][1]['segmentation'] = {'size': [40, 60], 'counts': '0X1'}  # replaced below with a real RLE
    from pycocotools import mask as mask_utils
    m = np.zeros((40, 60), np.uint8); m[5:20, 10:30] = 1
    d['annotations'][1]['segmentation'] = dict(mask_utils.encode(np.asfortranarray(m)), size=[40, 60])
    d['annotations'][1]['segmentation']['counts'] = d['annotations'][1]['segmentation']['counts'].decode()
    d['annotations'].append(dict(d['annotations'][0], id=99, bbox=[100, 100, 5, 5]))  # outside: dropped, warned
    (ann_dir := tmp_path / 'ann').mkdir()
    (ann := ann_dir / 'train.json').write_text(json.dumps(d))
    (root := tmp_path / 'images').mkdir()
    for im in d['images']:
        Image.new('RGB', (60, 40), (im['id'] * 30 % 255, 80, 120)).save(root / im['coco_url'].rsplit('/', 1)[1])
    return d, ann, root, tmp_path / 'cache'


def _same(a, b):
    "Targets equal, tensor for tensor, polygon for polygon."
    assert a.keys() == b.keys()
    for k in a:
        if k == 'polygons':
            assert len(a[k]) == len(b[k])
            for p, q in zip(a[k], b[k]): assert (p is None and q is None) or all(map(np.array_equal, p, q))
        elif isinstance(a[k], torch.Tensor): assert torch.equal(a[k], b[k]), k
        else: assert a[k] == b[k], k


def test_targets_identical_with_and_without_cache(lvis_file):
    d, ann, root, cache = lvis_file
    kw = dict(scales=(30, 50), max_size=100, seed=0)
    with pytest.warns(UserWarning, match='1 of .* boxes dropped'): built = LVISDetection(ann, root, **kw)
    with pytest.warns(UserWarning, match='1 of .* boxes dropped'): mapped = LVISDetection(ann, root, **kw)
    plain, from_dict = LVISDetection(ann, root, cache=False, **kw), LVISDetection(d, root, **kw)
    assert built.cache.built and not mapped.cache.built and plain.cache is None
    assert built.cache.folder == mapped.cache.folder and built.cache.folder.parent == cache
    for ds in (mapped, plain):
        assert len(ds) == len(from_dict) and ds.category_ids == from_dict.category_ids
        assert ds.dropped_boxes == from_dict.dropped_boxes == {'thin': 0, 'collapsed': 0, 'outside': 1}
        np.testing.assert_array_equal(ds.repeat_factors(0.5), from_dict.repeat_factors(0.5))
        a, b = ds.class_statistics(), from_dict.class_statistics()
        np.testing.assert_array_equal(a.image_counts, b.image_counts); assert a.num_images == b.num_images
        assert [ds.images[i] for i in range(len(ds))] == from_dict.images
        assert dict(ds.anns) == dict(from_dict.anns)
        for e in (0, 1):
            ds.set_epoch(e); from_dict.set_epoch(e)
            for i in range(len(ds)):
                x, t = ds[i]; y, u = from_dict[i]
                assert torch.equal(x, y); _same(t, u)
    assert mapped.lvis['annotations'] == from_dict.lvis['annotations']  # the dict, read again when asked for
    with pytest.raises(KeyError): mapped.anns[12345]


def test_cache_survives_pickling_and_spawned_workers(lvis_file):
    d, ann, root, cache = lvis_file
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = LVISDetection(ann, root, scales=(30,), seed=0)
    state = pickle.dumps(ds)
    assert len(state) < 4000  # the folder's name, not the records
    again = pickle.loads(state)
    _same(again[2][1], ds[2][1])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=detection_collate,
                                         multiprocessing_context='spawn')
    imgs, tgts = next(iter(loader))
    _same(tgts[1], ds[1][1])


def test_cache_built_once_by_concurrent_processes(lvis_file):
    "Two processes started at once, as the ranks of a machine: one builds, the other waits and maps it."
    d, ann, root, cache = lvis_file
    code = textwrap.dedent(f"""
        import warnings; warnings.simplefilter('ignore')
        from gol_nb.data import LVISDetection
        ds = LVISDetection({str(ann)!r}, {str(root)!r})
        print(int(ds.cache.built), ds.cache.folder, len(ds))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outs) == 1, outs  # exactly one build
    assert len({o[1] for o in outs}) == 1 and {o[2] for o in outs} == {'6'}
    assert [p.name for p in cache.iterdir() if not p.name.endswith('.lock') and p.name != 'digests'] == [Path(outs[0][1]).name]  # no leftovers


def test_changed_file_gets_a_new_cache(lvis_file):
    d, ann, root, cache = lvis_file
    kw = dict(scales=(30,), filter_empty=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = LVISDetection(ann, root, **kw)
        d['annotations'] = [x for x in d['annotations'] if x['image_id'] != 1]
        ann.write_text(json.dumps(d))
        b = LVISDetection(ann, root, **kw)
        c = LVISDetection(ann, root, train=False, **kw)  # other options: another cache
    assert a.cache.built and b.cache.built and c.cache.built and len({a.cache.folder, b.cache.folder, c.cache.folder}) == 3
    assert len(a.anns[1]) > 0 and b.anns[1] == []


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'manifest'])
def test_corrupted_cache_detected_and_rebuilt(lvis_file, damage):
    d, ann, root, cache = lvis_file
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = LVISDetection(ann, root, scales=(30,), seed=0)
        folder, want = ds.cache.folder, ds[3][1]
        f = folder / ('manifest.json' if damage == 'manifest' else 'annotations.bin')
        if damage == 'truncate': os.truncate(f, f.stat().st_size // 2)
        elif damage == 'flip':
            b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))
        else: f.write_text('{"annotations.bin": [1, "0"]')  # cut short
        with pytest.raises(CacheError): open_cache(folder)
        again = LVISDetection(ann, root, scales=(30,), seed=0)
    assert again.cache.built and again.cache.folder == folder
    open_cache(folder)  # whole again
    _same(again[3][1], want)


def test_read_only_annotation_folder_and_configurable_cache_folder(lvis_file, tmp_path, monkeypatch):
    d, ann, root, cache = lvis_file
    os.chmod(ann.parent, stat.S_IRUSR | stat.S_IXUSR)  # nothing may be written beside the annotation file
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            env_ds = LVISDetection(ann, root)
            mine = LVISDetection(ann, root, cache_dir=tmp_path / 'mine')
    finally: os.chmod(ann.parent, stat.S_IRWXU)
    assert sorted(p.name for p in ann.parent.iterdir()) == ['train.json']
    assert env_ds.cache.folder.parent == cache and mine.cache.folder.parent == tmp_path / 'mine' and mine.cache.built
    monkeypatch.delenv('GOL_NB_CACHE'); monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert annotation_cache_dir() == tmp_path / 'xdg' / 'gol_nb' / 'annotations'


def test_unwritable_cache_folder_falls_back_to_parsing(lvis_file, tmp_path):
    d, ann, root, cache = lvis_file
    (blocker := tmp_path / 'a_file').touch()  # a cache folder below a file cannot be created
    with pytest.warns(UserWarning, match='not writable.*parsed in this process'):
        ds = LVISDetection(ann, root, scales=(30,), seed=0, cache_dir=blocker / 'cache')
    assert ds.cache is None and len(ds) == 6
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        _same(ds[4][1], LVISDetection(ann, root, scales=(30,), seed=0)[4][1])


def test_file_digest_remembered_until_the_file_changes(tmp_path, monkeypatch):
    "A warm start does not read the annotation file: its digest is remembered against its identity."
    from gol_nb.data import cache as C
    f = tmp_path / 'a.json'; f.write_text('[1, 2]')
    memo = tmp_path / 'digests'
    assert C._remembered_digest(f, memo) == C._digest_file(f) and not memo.exists()  # just written: not remembered
    monkeypatch.setattr(C.time, 'time', lambda: f.stat().st_mtime + 10)  # ten seconds later: settled
    C._remembered_digest(f, memo)
    (m,) = memo.iterdir()
    m.write_text(json.dumps(dict(json.loads(m.read_text()), digest='remembered')))
    assert C._remembered_digest(f, memo) == 'remembered'  # read from the memo, not from the file
    f.write_text('[1, 3]')  # same size, new content: another identity (modification and change times)
    assert C._remembered_digest(f, memo) == C._digest_file(f) != 'remembered'

"Long-tailed classification data: protocol counts, real file formats, clear errors."
import pickle
import numpy as np
import pytest
import torch
from PIL import Image

from gol_nb.classification.data import (lt_counts, lt_indices, cifar_lt, load_cifar_pickle, write_fake_cifar, list_lt,
                                        read_split_list, ListFileDataset, mnist_lt, shot_groups, build_transform)


def _write_cifar100(root, per_class=500, test_per_class=2):
    "CIFAR-100 python pickles in the real format (b'data' uint8 (N, 3072), b'fine_labels'), images encode their index."
    folder = root / 'cifar-100-python'; folder.mkdir(parents=True)
    labels = np.tile(np.arange(100), per_class)  # interleaved, as in the real file
    data = np.zeros((len(labels), 3072), np.uint8)
    data[:, 0] = np.arange(len(labels)) % 256; data[:, 1] = np.arange(len(labels)) // 256  # recover indices from pixels
    with open(folder / 'train', 'wb') as f: pickle.dump({b'data': data, b'fine_labels': labels.tolist(), b'coarse_labels': [0] * len(labels)}, f)
    tl = np.repeat(np.arange(100), test_per_class)
    with open(folder / 'test', 'wb') as f: pickle.dump({b'data': np.zeros((len(tl), 3072), np.uint8), b'fine_labels': tl.tolist()}, f)
    with open(folder / 'meta', 'wb') as f: pickle.dump({b'fine_label_names': [f'c{i}'.encode() for i in range(100)]}, f)
    return labels


def test_cifar100_lt_if100_protocol_counts(tmp_path):
    labels = _write_cifar100(tmp_path)
    ds = cifar_lt(tmp_path, 100, imb_factor=100, train=True)
    counts = ds.class_counts
    assert len(ds) == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert counts.tolist() == [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    assert (np.diff(counts) <= 0).all()
    # the chosen images are the protocol's: one RandomState(0) shuffling each class in label order
    rng = np.random.RandomState(0); expect = []
    for c in range(100):
        idx = np.where(labels == c)[0]; rng.shuffle(idx); expect.append(idx[:counts[c]])
    got = ds.images[:, 0, 0, 0].astype(int) + 256 * ds.images[:, 0, 1, 0].astype(int)  # channel-major unpacking
    assert np.array_equal(got, np.concatenate(expect))
    assert ds.classes[3] == 'c3'
    test = cifar_lt(tmp_path, 100, imb_factor=100, train=False)
    assert test.class_counts.tolist() == [2] * 100  # balanced test set kept whole


@pytest.mark.parametrize('IF,total', [(50, 12608), (200, 9502)])
def test_cifar100_lt_other_factors(IF, total):
    assert sum(lt_counts(500, 100, IF)) == total


def test_cifar10_lt_batches(tmp_path):
    write_fake_cifar(tmp_path, 10, per_class=50, test_per_class=3)
    ds = cifar_lt(tmp_path, 10, imb_factor=10)
    assert ds.class_counts.tolist() == lt_counts(50, 10, 10) and ds.class_counts[-1] == 5
    assert len(cifar_lt(tmp_path, 10, 10, train=False)) == 30


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='cifar-100-python'): cifar_lt(tmp_path, 100)
    with pytest.raises(ValueError, match='10 or 100'): cifar_lt(tmp_path, 20)
    write_fake_cifar(tmp_path, 100, per_class=5)
    with pytest.raises(ValueError, match='imb_factor'): cifar_lt(tmp_path, 100, imb_factor=0)
    with pytest.raises(ValueError, match='imb_factor'): cifar_lt(tmp_path, 100, imb_factor=float('nan'), train=False)
    (tmp_path / 'cifar-100-python' / 'test').unlink()
    with pytest.raises(FileNotFoundError, match=r'cifar-100-python.test'): cifar_lt(tmp_path, 100, train=False)
    bad = tmp_path / 'bad'
    with open(bad, 'wb') as f: pickle.dump({b'data': np.zeros((2, 100), np.uint8), b'labels': [0, 1]}, f)
    with pytest.raises(ValueError, match=r'\(N, 3072\)'): load_cifar_pickle(bad, b'labels')
    with pytest.raises(ValueError, match='fine_labels'): load_cifar_pickle(bad, b'fine_labels')
    bad.write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='not a CIFAR python pickle'): load_cifar_pickle(bad, b'labels')


def test_lt_counts_errors():
    with pytest.raises(ValueError, match='imb_factor'): lt_counts(500, 100, 0.9)
    with pytest.raises(ValueError, match='num_classes'): lt_counts(500, 1, 10)
    with pytest.raises(ValueError, match='class 1 has 2 images'): lt_indices([0, 0, 0, 1, 1], [3, 3])


def _fake_tree(root, name='ImageNet_LT', splits=('train', 'test')):
    for c in range(3):
        (root / 'img' / f'n{c}').mkdir(parents=True, exist_ok=True)
        for j in range(c + 1): Image.new('RGB', (10 + c, 7), (50 * c, j, 0)).save(root / 'img' / f'n{c}' / f'{j}.jpg')
    for s in splits:
        lines = [f'n{c}/{j}.jpg {c}' for c in range(3) for j in range(c + 1)]
        (root / f'{name}_{s}.txt').write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('name,prefix,C', [('imagenet_lt', 'ImageNet_LT', 1000), ('places_lt', 'Places_LT', 365)])
def test_list_file_loaders(tmp_path, name, prefix, C):
    _fake_tree(tmp_path, prefix)
    ds = list_lt(name, tmp_path / 'img', tmp_path, 'train')
    assert len(ds) == 6 and ds.num_classes == C
    assert ds.class_counts[:4].tolist() == [1, 2, 3, 0]
    x, y = ds[5]
    assert y == 2 and x.dtype == torch.uint8 and x.shape == (3, 7, 12)
    ds = list_lt(name, tmp_path / 'img', tmp_path, 'test', transform=build_transform('imagenet', False, size=16))
    x, _ = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32


def test_list_file_errors(tmp_path):
    _fake_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match='ImageNet_LT_val.txt'): list_lt('imagenet_lt', tmp_path / 'img', tmp_path, 'val')
    with pytest.raises(FileNotFoundError, match='image root not found'): list_lt('imagenet_lt', tmp_path / 'nope', tmp_path)
    with pytest.raises(ValueError, match='split must be'): list_lt('imagenet_lt', tmp_path / 'img', tmp_path, 'dev')
    with pytest.raises(ValueError, match='name must be one of'): list_lt('inat', tmp_path / 'img', tmp_path)
    (tmp_path / 'l.txt').write_text('n0/0.jpg 0\nn1/0.jpg\n')
    with pytest.raises(ValueError, match=r'l.txt:2'): read_split_list(tmp_path / 'l.txt')
    (tmp_path / 'm.txt').write_text('n0/0.jpg 0\nn9/0.jpg 1\n')
    with pytest.raises(FileNotFoundError, match=r'n9.0\.jpg'): ListFileDataset(tmp_path / 'img', tmp_path / 'm.txt')
    (tmp_path / 'e.txt').write_text('\n')
    with pytest.raises(ValueError, match='no entries'): read_split_list(tmp_path / 'e.txt')


def test_mnist_lt_counts_and_split():
    tr, te = mnist_lt(100), mnist_lt(100, train=False)
    assert len(tr) == 988 and tr.class_counts.tolist() == lt_counts(400, 10, 100)
    assert te.class_counts.tolist() == [100] * 10
    assert len(mnist_lt(10)) == sum(lt_counts(400, 10, 10))
    x, y = tr[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8 and y == 0
    with pytest.raises(ValueError, match='test_per_class'): mnist_lt(10, test_per_class=500)


def test_mnist_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.csv'): mnist_lt(10, path=tmp_path / 'nope.csv')
    (tmp_path / 'bad.csv').write_text('1,2,3\n4,5,6\n')
    with pytest.raises(ValueError, match='785 columns'): mnist_lt(10, path=tmp_path / 'bad.csv')


def test_shot_groups():
    counts = lt_counts(500, 100, 100)
    g = shot_groups(counts)
    c = np.asarray(counts)
    assert (g[c > 100] == 0).all() and (g[(c >= 20) & (c <= 100)] == 1).all() and (g[c < 20] == 2).all()
    assert shot_groups([400, 80, 81, 16, 15], scaled=True).tolist() == [0, 1, 0, 1, 2]

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


def _cifar10_batch(folder, data, labels):
    with open(folder / 'data_batch_1', 'wb') as f: pickle.dump({b'data': data, b'labels': labels}, f)


@pytest.mark.parametrize('data,value', [(np.full((2, 3072), 300.0), '300.0'), (np.full((2, 3072), -5, np.int16), '-5'),
                                        (np.full((2, 3072), 2.5), '2.5'), (np.full((2, 3072), np.nan), 'nan')])
def test_cifar_pixels_a_uint8_cast_would_change_are_refused(tmp_path, data, value):
    "300.0 wrapped to 44 and int16 -5 to 251 before: now a sentence naming the file, the field and the value."
    folder = write_fake_cifar(tmp_path, 10, per_class=2)
    data[1, :] = 7; data[0, :5] = 7  # the first bad value is image 0, value 5
    _cifar10_batch(folder, data, [0, 1])
    msg = rf"data_batch_1: field b'data', image 0, value 5: {value} is not a pixel value"
    with pytest.raises(ValueError, match=msg):
        cifar_lt(tmp_path, 10, imb_factor=1)


def test_cifar_pixels_of_another_dtype_that_fit_are_kept(tmp_path):
    folder = write_fake_cifar(tmp_path, 10, per_class=2)
    data = np.arange(2 * 3072).reshape(2, 3072) % 256
    _cifar10_batch(folder, data.astype(np.int16), [0, 1])
    x, _ = load_cifar_pickle(folder / 'data_batch_1', b'labels')
    assert x.dtype == np.uint8 and np.array_equal(x.transpose(0, 3, 1, 2).reshape(2, 3072), data)


@pytest.mark.parametrize('labels,got', [(['cat', 'dog'], "str 'cat'"), ([0, 1.5], 'float 1.5'),
                                        ([True, 0], 'bool True'), ([b'0', b'1'], "bytes b'0'")])
def test_cifar_labels_must_be_integers(tmp_path, labels, got):
    folder = write_fake_cifar(tmp_path, 10, per_class=2)
    _cifar10_batch(folder, np.zeros((2, 3072), np.uint8), labels)
    msg = rf"data_batch_1: field b'labels' must be a list of integer class labels, got {got}"
    with pytest.raises(ValueError, match=msg):
        load_cifar_pickle(folder / 'data_batch_1', b'labels')


@pytest.mark.parametrize('content,msg', [(b'\x80\x04garbage', 'not a CIFAR python pickle of class names'),
                                         (pickle.dumps({b'label_names': [b'a', b'b']}), 'lists 10 class names, got 2'),
                                         (pickle.dumps([1, 2]), 'got a list without that key')],
                         ids=['garbage', 'too-few-names', 'not-a-dict'])
def test_corrupt_batches_meta_is_named(tmp_path, content, msg):
    folder = write_fake_cifar(tmp_path, 10, per_class=2)
    (folder / 'batches.meta').write_bytes(content)
    with pytest.raises(ValueError, match=f'batches.meta: .*{msg}'): cifar_lt(tmp_path, 10, imb_factor=1, train=False)


def test_list_file_with_a_utf8_bom_is_read(tmp_path):
    "A byte-order mark (Windows editors) was read as part of the first path, which then 'did not exist'."
    _fake_tree(tmp_path)
    (tmp_path / 'b.txt').write_bytes(b'\xef\xbb\xbfn0/0.jpg 0\r\nn1/0.jpg 1\r\n')
    ds = ListFileDataset(tmp_path / 'img', tmp_path / 'b.txt')
    assert ds.paths == ['n0/0.jpg', 'n1/0.jpg'] and ds.targets.tolist() == [0, 1]


@pytest.mark.parametrize('content,msg', [(b'n0/0.jpg 0\n\x89PNG\r\n\x1a\n\0\0\0\rIHDR', r'b.txt: byte 19 is NUL'),
                                         (b'n0/0.jpg 0\nn1/\xff.jpg 1\n', r'b.txt:2: byte 0xff is not UTF-8 text'),
                                         ('n0/0.jpg 0\n'.encode('utf-16'), r'b.txt: byte 3 is NUL')],
                         ids=['png', 'latin-1', 'utf-16'])
def test_binary_list_file_is_refused_naming_it(tmp_path, content, msg):
    _fake_tree(tmp_path)
    (tmp_path / 'b.txt').write_bytes(content)
    with pytest.raises(ValueError, match=msg): read_split_list(tmp_path / 'b.txt')


def test_corrupt_listed_jpeg_names_the_list_line_and_file(tmp_path):
    _fake_tree(tmp_path)
    (tmp_path / 'l.txt').write_text('n0/0.jpg 0\n\nn1/0.jpg 1\nn1/1.jpg 1\n')
    jpg = tmp_path / 'img' / 'n1' / '1.jpg'
    ds = ListFileDataset(tmp_path / 'img', tmp_path / 'l.txt')
    jpg.write_bytes(jpg.read_bytes()[:150])  # truncated
    with pytest.raises(OSError, match=rf"l.txt:4: {jpg}: cannot be decoded .*expected a JPEG"): ds[2]
    jpg.write_bytes(b'not an image')
    with pytest.raises(OSError, match=rf"l.txt:4: {jpg}: not an image file"): ds[2]
    assert ds[1][1] == 1  # the others still load

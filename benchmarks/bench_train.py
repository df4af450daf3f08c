"""Training-iteration time of Mask R-CNN with the GOL head against torchvision's stock head.

Same backbone (ResNet-FPN, random weights), same inputs. GOL = the gol_nb detector as mmdetection builds it
(`LossRoIHeads`: Gumbel + DropLoss classification over C channels, class-specific L1 box loss, cosine mask
predictor, mask targets rasterised per RoI from polygons, RoIAlign aligned=True, L1 RPN box loss) vs torchvision's
stock Mask R-CNN (softmax over C+1, smooth-L1, bitmap mask targets). Repetitions are interleaved (stock, GOL,
stock, GOL, ...) and the medians compared.

    python benchmarks/bench_train.py [--backbone resnet50] [--size 512] [--classes 1203] [--reps 7]
"""
import argparse, statistics, time, warnings
import torch
from torchvision.models.detection import MaskRCNN
from gol_nb.detection.model import build_detector, build_backbone, DetTransform, tiny_targets

warnings.filterwarnings('ignore', message='backbone')


def stock_detector(C, a):
    "torchvision's Mask R-CNN with the same backbone and sizes."
    m = MaskRCNN(build_backbone(a.backbone, 'none', norm=a.norm), num_classes=C + 1, rpn_post_nms_top_n_train=1000,
                 box_batch_size_per_image=512, box_detections_per_img=300, box_score_thresh=1e-4)
    m.transform = DetTransform(a.size, a.size)
    return m


def gol_detector(C, a):
    counts = torch.randint(1, 1000, (C,)).float()
    return build_detector(C, 'gol', dict(image_counts=counts, num_images=1000, lambda_='rare'), backbone=a.backbone,
                          pretrained='none', norm=a.norm, rpn_post_nms_train=1000, test_size=a.size, max_size=a.size)


def step_time(model, opt, imgs, tgts, sync):
    t = time.perf_counter()
    losses = model(imgs, tgts)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()
    sync()
    return time.perf_counter() - t


def heads_time(model, opt, feats, props, sizes, tgts, sync):
    "One forward/backward/step of the RoI heads alone on fixed features and proposals."
    t = time.perf_counter()
    _, losses = model.roi_heads(feats, [p.clone() for p in props], sizes, tgts)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()
    sync()
    return time.perf_counter() - t


def report(title, times):
    med = {k: statistics.median(v) for k, v in times.items()}
    print(title)
    for k, v in times.items():
        print(f"  {k:>6}: median {med[k] * 1000:9.1f} ms  (min {min(v) * 1000:.1f}, max {max(v) * 1000:.1f})")
    print(f"  ratio gol/stock = {med['gol'] / med['stock']:.3f} (medians), {min(times['gol']) / min(times['stock']):.3f} (minima)")
    return med['gol'] / med['stock']


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backbone', default='resnet50')
    p.add_argument('--norm', default='bn', help="backbone norm ('bn': random weights stay finite; 'norm_eval' as the paper)")
    p.add_argument('--size', type=int, default=512, help='image side')
    p.add_argument('--batch', type=int, default=2, help='images per iteration')
    p.add_argument('--classes', type=int, default=1203, help='C (LVIS v1: 1203)')
    p.add_argument('--reps', type=int, default=7, help='timed iterations per model')
    p.add_argument('--head-reps', type=int, default=20, help='timed RoI-head-only iterations per model')
    p.add_argument('--warmup', type=int, default=2, help='untimed iterations per model')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    torch.manual_seed(0)
    imgs, tgts = tiny_targets(a.batch, a.size, a.classes, seed=0)
    imgs = [i.to(dev) for i in imgs]
    tgts = [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in t.items()} for t in tgts]
    models = {}
    for name, make in (('stock', stock_detector), ('gol', gol_detector)):
        torch.manual_seed(0)
        m = make(a.classes, a).to(dev).train()
        opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
        models[name] = (m, opt)
    times = {k: [] for k in models}
    for r in range(a.warmup + a.reps):
        for name, (m, opt) in models.items():
            torch.manual_seed(r)  # same RoI sampling randomness for both
            t = step_time(m, opt, imgs, tgts, sync)
            if r >= a.warmup: times[name].append(t)
    # the RoI heads alone (the only part that differs), on the same features and proposals
    m0 = models['stock'][0]
    with torch.no_grad():
        il, t2 = m0.transform(imgs, tgts)
        feats = {k: v.detach() for k, v in m0.backbone(il.tensors).items()}
        m0.rpn.eval(); props, _ = m0.rpn(il, feats); m0.rpn.train()
    htimes = {k: [] for k in models}
    for r in range(a.warmup + a.head_reps):
        for name, (m, opt) in models.items():
            torch.manual_seed(r)
            t = heads_time(m, opt, feats, props, il.image_sizes, t2, sync)
            if r >= a.warmup: htimes[name].append(t)
    print(f"device={dev} backbone={a.backbone} size={a.size} batch={a.batch} classes={a.classes} reps={a.reps} "
          f"threads={torch.get_num_threads()}")
    ratio = report('full training iteration:', times)
    report('RoI heads only (forward + backward + step, same features and proposals):', htimes)
    print(f"ratio gol/stock (full iteration, medians) = {ratio:.3f}  (target <= 1.05)")


if __name__ == '__main__':
    main()

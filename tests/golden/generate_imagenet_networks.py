#!/usr/bin/env python
"""Record the OFFICIAL ImageNet networks of FFSD, PEFD and MixSKD: every tensor's name and shape, the parameter
count of each module and which BatchNorm scales start at 0, as the official code builds them (``imagenet_networks.json``, read by
``tests/test_imagenet_networks.py``; the test itself never needs the official code).

    HF_KD_OFFICIAL=/path/to/checkouts PYTHONPATH=. python tests/golden/generate_imagenet_networks.py

(the checkouts as for ``generate_fixtures.py``; each repository in its own process, they share module names).

- FFSD: ``ImageNetTrainer.Trainer.__init__`` itself (``--dataset imagenet --model resnet18|resnet34``), with its data
  loader replaced: the 2 common students, the leader (with its trans-fusion branch), the fusion module and the
  self-distillation decoders, sized by the trainer from a 224-px forward;
- PEFD: ``models.model_dict`` RESNET18 / RESNET34 / RESNET50 (1000 classes) and the projector ``Reg`` sized as
  ``train_student.py`` sizes it for ``--dataset imagenet`` (the last ``is_feat`` feature of a 224-px forward);
- MixSKD: ``MixSKD_ImageNet_ResNet50`` (backbone, auxiliary branches, self-teacher) and the discriminators of
  ``methods.discriminatorLoss`` over ``dim_ins`` as ``main_mixskd_imagenet.py`` computes them.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import generate_fixtures as gf  # noqa: E402

OUT = HERE / "imagenet_networks.json"


def describe(module, source: str) -> dict:
    import torch.nn as nn

    zero_gamma = [f"{n}.weight" if n else "weight" for n, m in module.named_modules()
                  if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    return {"source": source, "num_params": sum(p.numel() for p in module.parameters()),
            "state": {k: list(v.shape) for k, v in module.state_dict().items()},
            "zero_init_batchnorm": zero_gamma}  # BatchNorm scales initialised to 0 (zero-init residual)


def ffsd() -> dict:
    for stub in ("dominate", "dominate.tags"):
        m = sys.modules.setdefault(stub, types.ModuleType(stub))
        m.__getattr__ = lambda name: None
    out = {}
    with gf.official_imports(gf.repo_path("FFSD")) as (_, tmp):
        import ImageNetTrainer
        from options.options import parser

        ImageNetTrainer.create_dataLoader = lambda opt: SimpleNamespace(trainLoader=None, testLoader=None)
        for arch in ("resnet18", "resnet34"):
            opt = parser.parse_args(["--dataroot", "unused", "--dataset", "imagenet", "--model", arch,
                                     "--checkpoints_dir", str(tmp)])
            t = ImageNetTrainer.Trainer(opt, logging.getLogger("ffsd"))
            src = f"ImageNetTrainer.Trainer (--dataset imagenet --model {arch})"
            out[f"ffsd_{arch}"] = {
                "leader": describe(t.leader_model, src + ".leader_model"),
                "student": describe(t.models[0], src + ".models[0]"),
                "fusion": describe(t.fusion_module, src + ".fusion_module"),
                "decoder": describe(t.sd_models[0], src + ".sd_models[0]"),
                "leader_decoder": describe(t.sd_leader_model, src + ".sd_leader_model"),
                "model_num": t.model_num, "fusion_channel": t.fusion_channel, "fusion_spatial": t.fusion_spatil}
    return out


def pefd() -> dict:
    import torch

    out = {}
    with gf.official_imports(gf.repo_path("PEFD")):
        from models import model_dict
        from models.util import Reg

        nets = {}
        for name in ("RESNET18", "RESNET34", "RESNET50"):
            nets[name] = model_dict[name](num_classes=1000)
            out[f"pefd_{name.lower()}"] = describe(nets[name], f"models.model_dict['{name}'](num_classes=1000)")
        data = torch.randn(2, 3, 224, 224)  # train_student.py, --dataset imagenet
        with torch.no_grad():
            feat_t, _ = nets["RESNET34"].eval()(data, is_feat=True)
            feat_s, _ = nets["RESNET18"].eval()(data, is_feat=True)
        reg = Reg(feat_s[-1].shape[1], feat_t[-1].shape[1])
        out["pefd_projector_resnet34_resnet18"] = describe(reg, "models.util.Reg(feat_s[-1] dim, feat_t[-1] dim), "
                                                               "RESNET34 -> RESNET18 at 224 px")
    return out


def mixskd() -> dict:
    import torch

    gf.cpu_only_cuda()
    with gf.official_imports(gf.repo_path("Self-KD-Lib")):
        import methods
        import models

        net = models.MixSKD_ImageNet_ResNet50(num_classes=1000)
        src = "models.MixSKD_ImageNet_ResNet50(num_classes=1000)"
        net.eval()  # main_mixskd_imagenet.py: dim_ins from an eval-mode 224-px forward
        with torch.no_grad():
            _, features = net(torch.randn(2, 3, 224, 224))
        dim_ins = [f.size(1) for f in features]
        gan = methods.discriminatorLoss(dim_ins)
        return {"mixskd_resnet50": {
            "backbone": describe(net.backbone, src + ".backbone"),
            "branches": [{"body": describe(getattr(net.auxiliary_classifier, f"block_extractor{k}"),
                                           f"{src}.auxiliary_classifier.block_extractor{k}"),
                          "fc": describe(getattr(net.auxiliary_classifier, f"fc{k}"),
                                         f"{src}.auxiliary_classifier.fc{k}")} for k in (1, 2, 3)],
            "self_teacher": describe(net.final_aux_classifier, src + ".final_aux_classifier"),
            "discriminators": [describe(d, f"methods.discriminatorLoss(dim_ins).classifier[{i}]")
                               for i, d in enumerate(gan.classifier)],
            "num_params": sum(p.numel() for p in net.parameters()), "dim_ins": dim_ins}}


RUNS = {"FFSD": ffsd, "PEFD": pefd, "Self-KD-Lib": mixskd}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        import torch

        torch.manual_seed(0)
        json.dump(RUNS[sys.argv[2]](), sys.stdout)
        return
    import torch

    record = {"description": "The official ImageNet networks (tensor names and shapes, parameter counts), recorded "
                             "by tests/golden/generate_imagenet_networks.py from the official code",
              "generated": datetime.date.today().isoformat(), "torch": torch.__version__, "provenance": {},
              "networks": {}}
    for repo in RUNS:
        record["provenance"][repo] = gf.provenance(repo)
        run = subprocess.run([sys.executable, __file__, "--one", repo], check=True, capture_output=True, text=True)
        record["networks"].update(json.loads(run.stdout.strip().splitlines()[-1]))
    with open(OUT, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT.relative_to(gf.gp.ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()

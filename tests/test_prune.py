"""Lottery tickets: masks and their plan, zeros that stay zeros under Adam and quantization,
rewinding, an interrupted experiment that resumes exactly, transfer, sparse counters."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from torch import nn

import qmdd.prune._lottery as lottery
from qmdd.config import PruneConfig, QuantConfig, load_config
from qmdd.cost import nonzero_parameter_count, sparse_storage_bits, sparse_weight_bits, storage_bits
from qmdd.models import create_model
from qmdd.prune import (
    KeepPruned,
    Mask,
    PruneError,
    SaveStateAtStep,
    check_quantizers_keep_zeros,
    family_training_root,
    load_state_file,
    planned_unpruned,
    prune_level,
    prune_to_level,
    random_mask_like,
    run_lottery,
    run_transfer,
)
from qmdd.quant import calibrate, quantize
from qmdd.checkpoint import load_checkpoint
from qmdd.detector import load_detector
from qmdd.run_folder import level_dir
from qmdd.training import Callback, RunError, TrainState

from tiny_data import make_tiny_forensynths

QUIET = {"log": lambda message: None}


class _FakeTrainer:
    """What the callbacks read: ``model`` and ``state``."""

    def __init__(self, model: nn.Module, step: int = 0) -> None:
        self.model, self.state = model, TrainState(step=step)


def _tiny_net(bits: int = 2, quantizer: str = "lsq") -> nn.Module:
    """FP first conv ('0'), a low-bit conv ('2'), FP classifier ('6'), as quantize's policy says."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 1),
    )
    if bits < 32:
        quantize(model, QuantConfig(bits=bits, quantizer=quantizer))
        calibrate(model, [torch.randn(8, 3, 8, 8)])
    return model


def _half_mask(model: nn.Module) -> Mask:
    dense = Mask.dense(model, PruneConfig())
    return prune_level(dict(model.named_parameters()), dense, 0.5, "global")


def _adam_steps(model, callback: KeepPruned | None, steps: int = 8, step_end: bool = True) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-2)
    trainer = _FakeTrainer(model)
    if callback is not None:
        callback.on_fit_start(trainer)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,)).float()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trainer.state.step += 1
        if callback is not None and step_end:
            callback.on_step_end(trainer, loss)
    return optimizer


# ------------------------------------------------------------------------------ plan


def test_plan_is_the_papers_sparsity_sequence():
    counts = [planned_unpruned(1000, 0.2, level) for level in range(9)]
    assert counts == [1000, 800, 640, 512, 409, 327, 261, 208, 166]  # ceil-rounded removals
    sparsity = [round(100 * (1 - c / 1000)) for c in counts]
    assert sparsity == [0, 20, 36, 49, 59, 67, 74, 79, 83]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_imp_and_one_shot_masks_hold_exactly_the_planned_counts(scope):
    model = create_model("mesonet")
    weights = dict(model.named_parameters())
    dense = Mask.dense(model, PruneConfig())
    mask = dense
    for level in range(1, 9):
        previous, mask = mask, prune_level(weights, mask, 0.2, scope)
        one_shot = prune_to_level(weights, dense, 0.2, level, scope)
        if scope == "global":
            assert mask.unpruned == one_shot.unpruned == planned_unpruned(dense.total, 0.2, level)
        else:
            for name, (total, unpruned) in mask.layer_counts().items():
                assert unpruned == one_shot.layer_counts()[name][1] == planned_unpruned(total, 0.2, level)
        assert all(not (mask[n] & ~previous[n]).any() for n in mask)  # IMP only removes
    assert round(100 * mask.sparsity) == 83


def test_magnitude_pruning_removes_the_smallest_and_breaks_ties_by_position():
    weights = {"a.weight": torch.tensor([[0.1, -3.0, 0.5, 0.5]]), "b.weight": torch.tensor([[-0.2, 0.5, 2.0, 0.05]])}
    dense = Mask({name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()})
    mask = prune_level(weights, dense, 0.5, "global")  # 4 of 8 go: 0.05, 0.1, -0.2, then the first 0.5
    assert mask["a.weight"].tolist() == [[False, True, False, True]]
    assert mask["b.weight"].tolist() == [[False, True, True, False]]
    layer = prune_level(weights, dense, 0.5, "layer")
    assert layer["a.weight"].tolist() == [[False, True, False, True]]
    assert layer["b.weight"].tolist() == [[False, True, True, False]]


def test_random_mask_keeps_every_layers_count():
    model = create_model("mesonet")
    ticket = prune_to_level(dict(model.named_parameters()), Mask.dense(model, PruneConfig()), 0.2, 7, "global")
    random = random_mask_like(ticket, seed=3)
    assert random.layer_counts() == ticket.layer_counts() and random != ticket
    assert random == random_mask_like(ticket, seed=3)


def test_mask_round_trips_and_rejects_a_foreign_model(tmp_path):
    model = _tiny_net(32)
    mask = _half_mask(model)
    mask.save(tmp_path / "mask.pt")
    assert Mask.load(tmp_path / "mask.pt") == mask
    with pytest.raises(PruneError, match="another architecture"):
        mask.apply(create_model("mesonet"))
    with pytest.raises(PruneError, match="selects no conv/linear layer"):
        Mask.dense(model, PruneConfig(prunable=("nothing*",)))


# ----------------------------------------------------------------- zeros stay zeros


@pytest.mark.parametrize("quantizer", ["lsq", "slr"])
def test_pruned_weights_stay_exactly_zero_under_adam_in_fp_and_w2_layers(quantizer):
    model = _tiny_net(2, quantizer)
    mask = _half_mask(model)
    optimizer = _adam_steps(model, KeepPruned(mask))
    params = dict(model.named_parameters())
    for name in mask:
        pruned = ~mask[name]
        assert (params[name][pruned] == 0).all(), name  # stored weight
        state = optimizer.state[params[name]]
        assert (state["exp_avg"][pruned] == 0).all() and (state["exp_avg_sq"][pruned] == 0).all()
    w2 = model[2]  # the low-bit layer: the quantizer sees zeros and gives zeros
    assert w2.weight_bits == 2 and (w2.quantized_weight()[~mask["2.weight"]] == 0).all()
    assert (params["0.weight"][mask["0.weight"]] != 0).all()  # survivors still train


def test_gradient_hook_alone_keeps_zeros_and_without_it_adam_resurrects_them():
    model = _tiny_net(2)
    mask = _half_mask(model)
    _adam_steps(model, KeepPruned(mask), step_end=False)  # no re-application after steps
    assert all((dict(model.named_parameters())[n][~mask[n]] == 0).all() for n in mask)
    control = _tiny_net(2)
    mask.apply(control)
    _adam_steps(control, None)
    assert any((dict(control.named_parameters())[n][~mask[n]] != 0).any() for n in mask)


def test_n2uq_weights_are_refused_lsq_and_slr_accepted():
    for quantizer in ("lsq", "slr"):
        model = _tiny_net(2, quantizer)
        check_quantizers_keep_zeros(model, list(Mask.dense(model, PruneConfig())))
    model = _tiny_net(2, "n2uq")
    with pytest.raises(PruneError, match=r"2\.weight \(N2UQWeightQuantizer, 2 bit\).*--quantizer lsq or slr"):
        check_quantizers_keep_zeros(model, list(Mask.dense(model, PruneConfig())))


# ------------------------------------------------------------------------- rewinding


def test_rewinding_restores_the_saved_weights(tmp_path):
    model = _tiny_net(2)
    trainer = _FakeTrainer(model)
    SaveStateAtStep(0, tmp_path / "init.pt").on_fit_start(trainer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _adam_steps(model, None, steps=3)  # "training" moves every weight and step
    assert not torch.equal(model[2].weight, saved["2.weight"])
    mask = _half_mask(model)
    KeepPruned(mask, load_state_file(tmp_path / "init.pt")["model"]).on_fit_start(_FakeTrainer(model))
    for key, value in model.state_dict().items():
        expected = saved[key] * mask[key] if key in mask else saved[key]
        assert torch.equal(value, expected), key

    late = SaveStateAtStep(3, tmp_path / "late.pt")
    late.on_step_end(_FakeTrainer(model, step=2), torch.tensor(0.0))
    assert not (tmp_path / "late.pt").exists()
    late.on_step_end(_FakeTrainer(model, step=3), torch.tensor(0.0))
    assert load_state_file(tmp_path / "late.pt")["step"] == 3


def test_a_resumed_level_keeps_its_own_weights():
    model = _tiny_net(2)
    mask = _half_mask(model)
    before = model[2].weight.detach().clone()
    other = {k: torch.zeros_like(v) if k.endswith("weight") else v for k, v in model.state_dict().items()}
    KeepPruned(mask, other).on_fit_start(_FakeTrainer(model, step=5))  # step > 0: a resumed run
    assert torch.equal(model[2].weight, before * mask["2.weight"])


# --------------------------------------------------------- an experiment end to end


class _Interrupt(Callback):
    def on_epoch_end(self, trainer, val):
        raise KeyboardInterrupt  # after the Checkpointer wrote last.pt for this epoch


def _config(tiny_root, out, *extra):
    return load_config(None, [
        f"data.root={tiny_root}", "data.crop_size=24", "train.batch_size=8", "train.epochs=2",
        "model.arch=mesonet", "quant.bits=2", "prune.levels=2", "prune.one_shot=true",
        f"train.out={out}", *extra,
    ])


@pytest.fixture(scope="module")
def experiment(tiny_root, tmp_path_factory):
    """A W2A2 MesoNet IMP experiment to level 2 plus one-shot, interrupted in level 2."""
    out = tmp_path_factory.mktemp("lth")
    config = _config(tiny_root, out)
    real_run = lottery.run

    def interrupting(config, *, resume=False, callbacks=(), **kwargs):
        if config.train.out.endswith("level_02") and "imp" in config.train.out and not resume:
            callbacks = (*callbacks, _Interrupt())
        return real_run(config, resume=resume, callbacks=callbacks, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lottery, "run", interrupting)
        with pytest.raises(RunError, match="interrupted"):
            run_lottery(config, **QUIET)
    level2 = level_dir(out, "imp", 2)
    assert (level2 / "last.pt").is_file() and not (level2 / "metrics.json").exists()
    summary = run_lottery(config, **QUIET)  # continues: level 2 resumes, then one-shot
    return out, config, summary


def test_every_level_is_a_run_folder_with_mask_and_sparsity_report(experiment):
    out, _, summary = experiment
    folders = [level_dir(out, "imp", k) for k in (0, 1, 2)] + [level_dir(out, "one_shot", 2)]
    for folder in folders:
        for name in ("config.yaml", "metrics.json", "best.pt", "last.pt", "mask.pt", "sparsity.json"):
            assert (folder / name).is_file(), folder / name
    assert not level_dir(out, "one_shot", 1).exists()  # it would be IMP's level 1 again
    assert [(r["method"], r["level"]) for r in summary["rows"]] == [("imp", 0), ("imp", 1), ("imp", 2), ("one_shot", 0), ("one_shot", 1), ("one_shot", 2)]
    assert (out / "curves.png").stat().st_size > 1000 and (out / "summary.json").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "curves"))
    events.Reload()
    assert [e.step for e in events.Scalars("imp/seen_acc")] == [0, 20, 36]


def test_sparsity_report_equals_the_plan_overall_and_per_layer(experiment):
    out, _, _ = experiment
    for method, level in (("imp", 1), ("imp", 2), ("one_shot", 2)):
        report = json.loads((level_dir(out, method, level) / "sparsity.json").read_text())
        assert report["unpruned"] == report["planned_unpruned"] == planned_unpruned(report["total"], 0.2, level)
        assert report["total"] == sum(layer["total"] for layer in report["layers"].values())
        assert report["unpruned"] == sum(layer["unpruned"] for layer in report["layers"].values())
        assert report["nonzero"] <= report["unpruned"]
        assert {"features.0.0.weight", "classifier.5.weight"} <= set(report["layers"])  # FP first and last
        assert report["cost"]["nonzero_params"] < report["cost"]["params"]


def test_pruned_weights_are_zero_in_checkpoints_and_after_quantization(experiment):
    out, _, _ = experiment
    folder = level_dir(out, "imp", 2)
    mask = Mask.load(folder / "mask.pt")
    loaded = load_detector(folder / "best.pt")
    model, config = loaded.model, loaded.config
    assert config.prune.levels == 2 and config.quant.bits == 2
    layers = dict(model.named_modules())
    kinds = set()
    for name in mask:
        layer = layers[name.rpartition(".")[0]]
        pruned = ~mask[name]
        assert pruned.any() and (layer.weight[pruned] == 0).all(), name
        if hasattr(layer, "weight_quantizer"):
            kinds.add(layer.weight_bits)
            assert (layer.quantized_weight()[pruned] == 0).all(), name
        else:
            kinds.add(32)
    assert kinds == {2, 32}  # a mask on W2 layers and on FP layers alike


def test_interrupted_level_resumes_to_the_same_weights_as_an_uninterrupted_one(experiment, tmp_path):
    out, config, _ = experiment
    straight = tmp_path / "straight"
    for part in ("imp/level_00", "imp/level_01"):
        shutil.copytree(out / part, straight / part)
    shutil.copy(out / "config.yaml", straight / "config.yaml")
    run_lottery(replace(config, train=replace(config.train, out=str(straight)), prune=replace(config.prune, one_shot=False)), **QUIET)
    for name in ("best.pt", "last.pt"):
        a = load_checkpoint(level_dir(out, "imp", 2) / name)
        b = load_checkpoint(level_dir(straight, "imp", 2) / name)
        assert a["trainer"]["step"] == b["trainer"]["step"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name


def test_a_finished_experiment_trains_nothing_and_refuses_other_settings(experiment, tiny_root):
    out, config, _ = experiment
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")}
    run_lottery(config, **QUIET)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("best.pt")} == stamps
    with pytest.raises(PruneError, match="prune.fraction: 0.2 -> 0.3"):
        run_lottery(_config(tiny_root, out, "prune.fraction=0.3"), **QUIET)


@pytest.mark.slow
def test_ticket_transfers_next_to_dense_and_random_masks(experiment, tmp_path):
    out, config, _ = experiment
    target = make_tiny_forensynths(tmp_path / "target", seed=1)
    transfer = replace(config, data=replace(config.data, root=str(target)), train=replace(config.train, out=str(tmp_path / "transfer"), epochs=1))
    summary = run_transfer(out, transfer, [1], **QUIET)
    arms = {(r["arm"], r["method"], r["level"]) for r in summary["rows"]}
    assert arms == {("dense", "dense", 0), ("ticket", "imp", 1), ("random", "imp", 1)}
    ticket = Mask.load(tmp_path / "transfer/imp/level_01/ticket/mask.pt")
    random = Mask.load(tmp_path / "transfer/imp/level_01/random/mask.pt")
    assert ticket == Mask.load(level_dir(out, "imp", 1) / "mask.pt")
    assert random.layer_counts() == ticket.layer_counts() and random != ticket
    with pytest.raises(PruneError, match="source's own training data"):
        run_transfer(out, replace(transfer, data=config.data), [1], **QUIET)


# ------------------------------------------------------------------ sparse counters


def test_sparse_counters_by_hand():
    fp = nn.Linear(10, 4, bias=False)
    with torch.no_grad():
        fp.weight.view(-1)[10:] = 0.0  # 10 of 40 weights left
    assert nonzero_parameter_count(fp) == 10
    assert storage_bits(fp) == 40 * 32
    assert sparse_storage_bits(fp) == 40 * 1 + 10 * 32  # bitmap + non-zero values
    assert sparse_weight_bits(40, 30, 2) == 40 * 2  # 2-bit: a bitmap only pays below 50 %
    assert sparse_weight_bits(40, 10, 2) == 40 + 10 * 2

    model = _tiny_net(2)
    mask = _half_mask(model)
    mask.apply(model)
    w2 = model[2]
    n = w2.weight.numel()
    nonzero = int((w2.quantized_weight() != 0).sum())  # survivors that round to code 0 count as zeros
    assert nonzero <= int(mask["2.weight"].sum())
    saved = storage_bits(model) - sparse_storage_bits(model)
    fp_saved = sum(
        model[i].weight.numel() * 32 - min(model[i].weight.numel() * 32, model[i].weight.numel() + int((model[i].weight != 0).sum()) * 32)
        for i in (0, 6)
    )
    assert saved == fp_saved + n * 2 - min(n * 2, n + nonzero * 2)


@pytest.mark.slow
def test_embedded_family_tree_trains_on_another_family(tmp_path, monkeypatch):
    monkeypatch.setenv("QMDD_CACHE", str(tmp_path / "cache"))
    root = family_training_root("transposed_conv", scale=0.002, progress=False)
    info = json.loads((root / "benchmark.json").read_text())
    assert info["seen_family"] == "transposed_conv" and info["complete"] is True
    fakes = sorted((root / "train").rglob("1_fake/*.png")) + sorted((root / "val").rglob("1_fake/*.png"))
    assert fakes and all(path.name.endswith("_transposed_conv.png") for path in fakes)
    assert (root / "test" / "nearest_up" / "1_fake").is_dir()  # the benchmark's own test sets
    assert family_training_root("transposed_conv", scale=0.002, progress=False) == root  # cached
    with pytest.raises(PruneError, match="did you mean 'transposed_conv'"):
        family_training_root("transposed_con", scale=0.002)

"""The main-process habit of diffusers, Accelerate and Lightning scripts, on real DDP ranks: ``wb.main_process``.

diffusers' ``examples/text_to_image/train_text_to_image.py`` validates under ``if accelerator.is_main_process:``:
``log_validation`` builds a ``StableDiffusionPipeline`` from the unwrapped models, generates one image per
validation prompt, and hands them to the trackers, while the other ranks go on into the next epoch's DDP step. The
port below keeps that block as the script has it (the same gate, EMA swap, pipeline construction and generation
calls), with the tracker loop replaced by one logger line, and the script's ``accelerator.log`` by
``wb.log_metrics``. It runs on two ranks under a real ``Accelerator`` (gloo on CPU) with a tiny pipeline built here,
so no weights are downloaded.

With ``wb.log_images`` in that place, rank 0 would wait in a logging collective for rank 1, and rank 1 in DDP for
rank 0 (tests/wandb_logger/test_logging_faults.py shows what then happens); ``main_process`` has no collective.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

PROMPTS = ["a red cube", "a blue sphere"]
EPOCHS, STEPS_PER_EPOCH = 2, 2


def build_tiny_pipeline(root: Path) -> Path:
    """A Stable Diffusion pipeline of a few thousand weights, saved under ``root``: the script loads it by path."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (root / "tok").mkdir(parents=True)
    (root / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"),
                              model_max_length=16, pad_token="<|endoftext|>")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(4, 8), norm_num_groups=2, cross_attention_dim=8,
                                attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8),
                        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16,
                                                num_attention_heads=2, num_hidden_layers=1,
                                                max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDPMScheduler(num_train_timesteps=100, clip_sample=True),
                                       safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(root / "model")
    return root / "model"


# ---------------------------------------------------------------------------------------------- the ported script
def log_validation(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, args: Any, accelerator: Any,
                   weight_dtype: Any, epoch: int, wb: Any) -> list[Any]:
    """diffusers' ``log_validation``; only the tracker loop is now the one ``wb.main_process`` line."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        args.pretrained_model_name_or_path,
        vae=accelerator.unwrap_model(vae),
        text_encoder=accelerator.unwrap_model(text_encoder),
        tokenizer=tokenizer,
        unet=accelerator.unwrap_model(unet),
        safety_checker=None,
        revision=args.revision,
        variant=args.variant,
        torch_dtype=weight_dtype,
    )
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=True)
    generator = None if args.seed is None else torch.Generator(device=accelerator.device).manual_seed(args.seed)
    images = []
    for i in range(len(args.validation_prompts)):
        with torch.autocast("cuda"):  # as the script has it; a no-op (with a warning) without CUDA
            image = pipeline(args.validation_prompts[i], num_inference_steps=20, generator=generator).images[0]
        images.append(image)

    # the logger line: was `for tracker in accelerator.trackers: ... tracker.log({"validation": [wandb.Image(...)]})`
    wb.main_process.log_images(images, captions=[f"{i}: {p}" for i, p in enumerate(args.validation_prompts)],
                               step=epoch, prefix="validation")

    del pipeline
    torch.cuda.empty_cache()
    return images


def train(rank: int, args: Any, out: Path) -> dict[str, Any]:
    """The script's training loop around the validation block, shortened (random batches, a few steps)."""
    import contextlib

    import torch
    import torch.nn.functional as F  # noqa: N812 - the script's name for it
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.testing.probe import CollectiveProbe

    accelerator = Accelerator(cpu=True)
    wb = WandbLogger(WandbConfig(project="diffusers-port", mode="offline", dir=str(out), log_system_metrics=False,
                                 metric_prefix="", collective_timeout=120.0))
    noise_scheduler = DDPMScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(args.pretrained_model_name_or_path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(args.pretrained_model_name_or_path, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="unet")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema_unet = EMAModel(unet.parameters(), model_cls=UNet2DConditionModel, model_config=unet.config)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    weight_dtype = torch.float32
    input_ids = tokenizer(["a cat"] * 2, padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    global_step, validation_collectives = 0, []
    for epoch in range(args.num_train_epochs):
        train_loss = 0.0
        for _ in range(STEPS_PER_EPOCH):
            with accelerator.accumulate(unet):
                latents = torch.randn(2, 4, 8, 8)
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2,)).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(input_ids)[0]
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
                loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(2)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema_unet.step(unet.parameters())
                global_step += 1
                wb.log_metrics({"train_loss": train_loss}, step=global_step)  # was accelerator.log(...)
                train_loss = 0.0

        probe = CollectiveProbe() if accelerator.is_main_process else contextlib.nullcontext()
        with probe:  # counts what the block below sends through torch.distributed (it must send nothing)
            if accelerator.is_main_process:
                if args.validation_prompts is not None and epoch % args.validation_epochs == 0:
                    if args.use_ema:
                        # store the UNet's weights and load the EMA weights for inference
                        ema_unet.store(unet.parameters())
                        ema_unet.copy_to(unet.parameters())
                    log_validation(
                        vae,
                        text_encoder,
                        tokenizer,
                        unet,
                        args,
                        accelerator,
                        weight_dtype,
                        global_step,
                        wb,  # the logger, where the script reads accelerator.trackers
                    )
                    if args.use_ema:
                        # back to the UNet's own weights
                        ema_unet.restore(unet.parameters())
        if isinstance(probe, CollectiveProbe):
            validation_collectives.append(sum(probe.api.values()))

    accelerator.wait_for_everyone()
    wb.finish()
    accelerator.end_training()
    return {"validation_collectives": validation_collectives, "run_dir": wb.run_dir, "steps": global_step}


@pytest.fixture(scope="module")
def ported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("diffusers-port")
    model = build_tiny_pipeline(root)
    args = argparse.Namespace(pretrained_model_name_or_path=str(model), revision=None, variant=None, seed=0,
                              validation_prompts=PROMPTS, validation_epochs=1, num_train_epochs=EPOCHS, use_ema=True)
    results = values_or_raise(run_ranks(lambda rank: train(rank, args, root / "out"), 2,
                                        backend=None, timeout=540))
    from sdxl_dist_log.offline import read_run

    return {"ranks": results, "run": read_run(results[0]["run_dir"])}


def test_validation_images_from_the_main_process_land_in_the_run(ported: dict[str, Any]) -> None:
    rows = ported["run"].rows_with("validation/images")
    assert [r["trainer/step"] for r in rows] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    for row in rows:
        media = row["validation/images"]
        assert media["count"] == len(PROMPTS)
        assert media["captions"] == [f"{i}: {p}" for i, p in enumerate(PROMPTS)]


def test_the_validation_block_makes_no_collective_and_the_ranks_stay_in_step(ported: dict[str, Any]) -> None:
    """The block ran once an epoch on rank 0 only (EMA weights swapped in and out), without one collective; every
    training step's loss was
    reduced over both ranks in the meantime (had rank 0 waited in a logging collective, DDP would have hung)."""
    assert ported["ranks"][0]["validation_collectives"] == [0] * EPOCHS
    assert ported["ranks"][1]["validation_collectives"] == []
    rows = ported["run"].rows_with("train_loss")
    assert [r["trainer/step"] for r in rows] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert all(math.isfinite(r["train_loss"]) for r in rows)

"""MODA's default learning-rate schedule, StepLR with optional warm-up (`--lr_scheduler_type step_lr`). The optimizer
is the Trainer's own (`--optim`, fused AdamW by default), and so is any other `--lr_scheduler_type`."""

import torch

# The --lr_scheduler_type of MODA's StepLR: transformers' get_scheduler has no step schedule.
STEP_LR = "step_lr"


def step_lr_schedule(optimizer, training_args, num_training_steps: int):
    """
    A StepLR that decays every `--lr_step_size` optimizer steps by `--lr_gamma` (the Trainer steps it once per
    optimizer step). By default the rate is cut three times: after 1/4, 1/2 and 3/4 of training. With
    `--warmup_steps N` (or a fraction of all steps, below 1) the rate first rises linearly over those steps, then
    StepLR counts from the end of the warm-up. (Off by default: on the demo, warm-up with a higher rate did not help.)
    """
    step_size = training_args.lr_step_size or max(1, num_training_steps // 4)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=training_args.lr_gamma)
    warmup_steps = training_args.get_warmup_steps(num_training_steps)
    if not warmup_steps:
        return step_lr
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, step_lr], milestones=[warmup_steps])

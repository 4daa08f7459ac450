"""Whether a module was sharded by FSDP2: the one check the log-prob and checkpoint code need."""


def is_fsdp_unit(module) -> bool:
    """Whether `module` was sharded by FSDP2's fully_shard (False on a torch without FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)

"""What the two diffusion-expert configs share: fields added after checkpoints existed, and their checks."""

# Written to config.json only when set (not their default), so a config without them is saved exactly as it was
# before they existed, and older checkpoints read back unchanged.
OPTIONAL_FIELDS: dict[str, object] = {
    "state_mask_input": False,
    "state_dropout": 0.0,
    "condition_norm": False,
    "cross_attention": False,
    "max_condition_tokens": 1024,
    "condition_tokens_from": "last_hidden_state",
    "condition_token_norm": False,
    "prediction_type": "epsilon",
}


def drop_unset_optional_fields(config_dict: dict) -> dict:
    """``config_dict`` (a ``to_dict()`` result) without the optional fields that hold their default."""
    for name, default in OPTIONAL_FIELDS.items():
        if name in config_dict and config_dict[name] == default:
            config_dict.pop(name)
    return config_dict


# What a diffusion head may predict: the noise (the reference) or the clean chunk.
PREDICTION_TYPES = ("epsilon", "sample")


def check_prediction_type(prediction_type: str) -> None:
    """Reject a ``prediction_type`` the heads' training target and DDIM sampling do not implement."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not one of {PREDICTION_TYPES}")


# Which of the VLM's token states a cross-attending head reads: the language model's last layer (as the pooled
# condition) or its input, where the image tokens are the vision tower's merged patches as they are.
CONDITION_TOKEN_SOURCES = ("last_hidden_state", "input_embeddings")


def check_condition_tokens(cross_attention: bool, condition_tokens_from: str, condition_token_norm: bool) -> None:
    """Reject an unknown ``condition_tokens_from``, or either token option without the cross-attention that reads
    the tokens (the head config and ``ActionHeadArguments`` share this check)."""
    if condition_tokens_from not in CONDITION_TOKEN_SOURCES:
        raise ValueError(f"condition_tokens_from={condition_tokens_from!r} is not one of {CONDITION_TOKEN_SOURCES}")
    if cross_attention:
        return
    if condition_tokens_from != OPTIONAL_FIELDS["condition_tokens_from"]:
        raise ValueError(
            f"condition_tokens_from={condition_tokens_from!r} with cross_attention=False: only the cross-attention "
            "reads token states; it needs cross_attention=True, or leave condition_tokens_from at its default"
        )
    if condition_token_norm:
        raise ValueError(
            "condition_token_norm=True with cross_attention=False: it standardises the tokens the cross-attention "
            "reads; it needs cross_attention=True"
        )


def check_state_dropout(state_dropout: float, state_dim: int) -> None:
    """Reject a rate outside [0, 1], or a rate for a head that has no state (``state_dim`` 0)."""
    if not 0.0 <= state_dropout <= 1.0:
        raise ValueError(f"state_dropout must be in [0, 1], got {state_dropout}")
    if state_dropout > 0 and state_dim == 0:
        raise ValueError(f"state_dropout={state_dropout} with state_dim=0: there is no state to drop")


__all__ = [
    "CONDITION_TOKEN_SOURCES",
    "OPTIONAL_FIELDS",
    "PREDICTION_TYPES",
    "check_condition_tokens",
    "check_prediction_type",
    "check_state_dropout",
    "drop_unset_optional_fields",
]

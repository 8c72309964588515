"""Class names and prompt templates → text for the CLIP text encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# The paper's prompt (METHOD.md §2) and the second template of its code.
PAPER_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "The nice {}.")
DEFAULT_TEMPLATE = PAPER_TEMPLATES[0]


def imagenet_classnames() -> list[str]:
    """ImageNet-1k class names as shipped by open_clip (index = label)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def check_template(template: str) -> str:
    """A template holds exactly one ``{}`` where the class name goes."""
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must contain exactly one '{{}}', got {template!r}")
    return template


def format_prompts(classnames: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class, in class order."""
    check_template(template)
    return [template.format(name) for name in classnames]


def tokenize_class_prompts(
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
) -> torch.Tensor:
    """Token ids ``[C, context_length]`` of one prompt per class.

    Training looks up a batch's texts by label from this table, so each prompt is tokenised once.
    """
    return tokenizer(format_prompts(classnames, template))

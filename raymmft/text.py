"""Class names and prompt templates → text for the CLIP text encoder. Pure Python (no torch): the
config validates templates with ``check_template``, the one place the rule lives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The paper's prompt (docs/method.md, "Fine-tuning") and the second template of its code.
PAPER_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "The nice {}.")
DEFAULT_TEMPLATE = PAPER_TEMPLATES[0]


def imagenet_classnames() -> list[str]:
    """ImageNet-1k class names as shipped by open_clip (index = label)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def check_template(template: str) -> str:
    """A template holds exactly one ``{}`` where the class name goes (and no other braces, which
    ``str.format`` would read as fields)."""
    if (
        template.count("{}") != 1
        or template.replace("{}", "").count("{")
        or template.replace("{}", "").count("}")
    ):
        raise ValueError(f"must contain exactly one '{{}}', got {template!r}")
    return template


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: ``[t.format(c) for c in classnames for t in templates]``."""
    if not templates:
        raise ValueError("need at least one prompt template")
    for template in templates:
        check_template(template)
    return [template.format(name) for name in classnames for template in templates]


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

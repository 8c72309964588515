"""Class names and prompt templates → text for the CLIP text encoder. Pure Python (no torch import):
the config validates templates with ``check_template``, and ``check_class_prompts`` is the one rule
for the prompts of a set of classes (each fits the text encoder's context; no two classes read the
same to it), applied by preflight and where training tokenises its prompts."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from raymmft.errors import DataError

if TYPE_CHECKING:
    import torch

# The paper's prompt (docs/method.md, "Fine-tuning") and the second template of its code.
PAPER_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "The nice {}.")
DEFAULT_TEMPLATE = PAPER_TEMPLATES[0]

# open_clip's ImageNet names (OpenAI's) give two pairs of classes the same name; the second of each
# pair gets its WordNet lemma (n04008634 "projectile, missile", n04355933 "sunglass") so that the
# text encoder can tell all 1,000 apart.
IMAGENET_RENAMED = {744: "projectile", 836: "sunglass"}
SHOWN_NAME = 60  # characters of a class name quoted in an error


def imagenet_classnames() -> list[str]:
    """ImageNet-1k class names as shipped by open_clip (index = label), with the two repeated
    names told apart (``IMAGENET_RENAMED``)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    for index, name in IMAGENET_RENAMED.items():
        names[index] = name
    return names


def tokenizer_text(text: str) -> str:
    """``text`` as open_clip's tokenizer reads it before it splits it into tokens (its ``lower``
    cleaning): fixed by ftfy (mojibake, NFC, control characters), HTML entities unescaped,
    whitespace collapsed, lowercased. Two names with the same form are one text to the encoder."""
    if not (text.isascii() and text.isprintable()):  # ftfy leaves such text as it is, and is slow
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


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


def _shown(name: str) -> str:
    return repr(name if len(name) <= SHOWN_NAME else name[: SHOWN_NAME - 3] + "...")


def check_class_prompts(
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    model: str = "the text encoder",
) -> torch.Tensor:
    """Token ids ``[C * K, context_length]`` of the prompts of ``classnames`` under ``templates``
    (class-major, as ``class_prompts``), checked against the one rule for class prompts:

    - each prompt fits the tokenizer's context: cut, its class name loses its end (open_clip keeps
      the end-of-text token and drops the words), so two long names can read the same;
    - no two classes tokenise to the same ids under every template: the tokenizer normalises
      (open_clip lowercases, fixes text with ftfy, collapses whitespace), so ``Cat`` and ``cat``
      are one text to the encoder, and accuracy and AUROC over them would mean nothing.

    A broken rule is a ``DataError`` that names the class (or both classes); ``model`` names the
    encoder whose context a prompt exceeds.
    """
    prompts = class_prompts(classnames, templates)
    ids = tokenizer(prompts)
    context = getattr(tokenizer, "context_length", None)
    if context:  # a prompt that fits tokenises the same with one more position (then padding)
        longer = tokenizer(prompts, context_length=context + 1)
        cut = (ids != longer[:, :context]).any(dim=1).nonzero()
        if len(cut):
            index = int(cut[0])
            name, template = classnames[index // len(templates)], templates[index % len(templates)]
            raise DataError(
                f"class {_shown(name)}: its prompt {template!r} is longer than {model}'s "
                f"context of {context} tokens, and would be cut; give the class a shorter name"
            )
    first: dict[tuple[int, ...], int] = {}
    for index, row in enumerate(ids.reshape(len(classnames), -1).tolist()):
        other = first.setdefault(tuple(row), index)
        if other != index:
            raise DataError(
                f"classes {_shown(classnames[other])} and {_shown(classnames[index])} give the "
                f"same prompt tokens (the tokenizer lowercases and normalises text): {model} "
                "cannot tell them apart; rename one"
            )
    return ids


def tokenize_class_prompts(
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
) -> torch.Tensor:
    """Token ids ``[C, context_length]`` of one prompt per class, checked by
    ``check_class_prompts`` (the rule preflight applies before any trial).

    Training looks up a batch's texts by label from this table, so each prompt is tokenised once.
    """
    return check_class_prompts(tokenizer, classnames, [template])

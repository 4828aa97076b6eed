"""Prompts for training: one for all images or one per image, and the words a file records."""

from __future__ import annotations

import re

from .errors import TrainingInputError

_FILLER = {"a", "an", "the", "photo", "picture", "image", "of", "in", "on", "with", "and", "style", "painting"}


def prompt_lines(text: str) -> list[str]:
    """The non-empty lines of a prompt input."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompts_for_images(text: str, count: int, input_name: str) -> list[str]:
    """One prompt per image: a single line applies to all, otherwise one line per image in order."""
    lines = prompt_lines(text)
    if not lines:
        raise TrainingInputError(input_name, "is empty; give a prompt such as 'a photo of sks dog'")
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise TrainingInputError(
            input_name,
            f"has {len(lines)} lines but there are {count} images: give one prompt for all, or one per image",
        )
    return lines


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def trigger_and_class_words(instance_prompt: str, class_prompt: str) -> tuple[str, str]:
    """The rare token of the instance prompt (``sks``) and the class word (``dog``), best effort.

    The trigger word is what the instance prompt has and the class prompt lacks; the
    class word the last content word of the class prompt. Of prompts given one per image,
    the first line of each counts.
    """
    lines = prompt_lines(instance_prompt)
    first = lines[0] if lines else ""
    class_lines = prompt_lines(class_prompt)
    class_words = _words(class_lines[0] if class_lines else "")
    extra = [w for w in _words(first) if w not in class_words and w not in _FILLER]
    content = [w for w in class_words if w not in _FILLER]
    return (extra[0] if extra else ""), (content[-1] if content else "")

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


def without_word(prompt: str, word: str) -> str:
    """``prompt`` with every whole-word, case-insensitive occurrence of ``word`` taken out (spaces tidied)."""
    pattern = re.compile(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", re.IGNORECASE)
    return " ".join(pattern.sub(" ", prompt).split())


def trigger_word_pairs(instance_prompts: list[str], trigger_word: str) -> dict[str, str]:
    """Each instance prompt and the same prompt without the trigger word (the trigger word's prior).

    Raises :class:`TrainingInputError` when there is no trigger word or a prompt lacks it: the prior
    teaches that the subject comes with that word, so every instance prompt must hold it.
    """
    if not trigger_word:
        raise TrainingInputError(
            "instance_prompt",
            "trigger_word_prior needs a trigger word: a word of the instance prompt that the class prompt lacks "
            "(sks in 'a photo of sks dog' against 'a photo of dog'); give one, or set trigger_word_prior to 0",
        )
    pairs: dict[str, str] = {}
    for number, prompt in enumerate(instance_prompts, start=1):
        stripped = without_word(prompt, trigger_word)
        if stripped == " ".join(prompt.split()):
            raise TrainingInputError(
                "instance_prompt",
                f"line {number} ({prompt[:60]!r}) lacks the trigger word {trigger_word!r}, which trigger_word_prior "
                "takes out of every instance prompt; add it to that line, or set trigger_word_prior to 0",
            )
        pairs[prompt] = stripped
    return pairs

"""The fake server's answers to audio transcriptions and translations, in each ``response_format``.

Azure answers ``json`` and ``verbose_json`` as JSON and ``text``, ``srt`` and ``vtt`` as ``text/plain``;
a relay or a client that expects JSON for every format breaks on the latter, so the fake sends them as
Azure does.
"""

from __future__ import annotations

import json
from typing import Literal

__all__ = ["transcript"]

Task = Literal["transcribe", "translate"]


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


def transcript(text: str, response_format: str, task: Task, duration_s: float) -> tuple[str, str]:
    """(body, content type) of the answer carrying ``text``, one segment lasting ``duration_s``."""
    if response_format == "text":
        return text + "\n", "text/plain"
    if response_format == "srt":
        return f"1\n{_clock(0, ',')} --> {_clock(duration_s, ',')}\n{text}\n\n", "text/plain"
    if response_format == "vtt":
        return f"WEBVTT\n\n{_clock(0, '.')} --> {_clock(duration_s, '.')}\n{text}\n\n", "text/plain"
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": duration_s,
            "text": text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        answer = {"task": task, "language": "english", "duration": duration_s, "text": text, "segments": [segment]}
        return json.dumps(answer), "application/json"
    return json.dumps({"text": text}), "application/json"

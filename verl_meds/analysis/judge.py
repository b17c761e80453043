"""Optional LLM judge: label the reasoning pattern of wrong responses (the paper's LLM-annotated diversity).

Off by default: nothing here runs unless a [`JudgeConfig`] with an endpoint URL is built (the analysis CLI's
`--judge-url`). The endpoint is any OpenAI-compatible chat-completions API (vLLM, SGLang, a hosted API): one POST to
`<url>/chat/completions` per group of wrong responses to one prompt at one step. The judge is asked to give every
response a short pattern label, using the same label for responses that follow the same line of reasoning; the
number of distinct labels per group is then `distinct_patterns` in `verl_meds.analysis.diversity`.

Labels are consistent only within one request: a group larger than `max_responses` is split into several requests,
whose labels are not aligned with each other (a warning says so). The API key is read from the environment variable
named by `api_key_env` and is never logged.

Example (a local server):

```python
>>> from verl_meds.analysis.judge import JudgeConfig
>>> JudgeConfig(url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct").endpoint
'http://127.0.0.1:8000/v1/chat/completions'

```
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You compare wrong solutions to one math problem. Give every solution a short label (two to six words) that "
    "names its line of reasoning or its main mistake. Solutions that follow the same pattern must get exactly the "
    "same label; different patterns get different labels. Reply with a JSON object only: "
    '{"labels": ["...", ...]}, one label per solution, in the order given.'
)
"""System message sent with every request."""


class JudgeError(RuntimeError):
    """The endpoint failed or its reply could not be read as one label per response."""


@dataclass(frozen=True)
class JudgeConfig:
    """
    Where and how to ask the judge.

    Parameters:
        url (`str`):
            Base URL of an OpenAI-compatible API (e.g. `http://host:8000/v1`); `/chat/completions` is appended
            unless the URL already ends with it.
        model (`str`):
            Model name sent in the request.
        api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            Environment variable holding the key; sent as a Bearer token when set, omitted otherwise.
        timeout_seconds (`float`, *optional*, defaults to `120.0`):
            HTTP timeout per request.
        max_tokens (`int`, *optional*, defaults to `1024`):
            Reply budget.
        temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature of the judge.
        max_responses (`int`, *optional*, defaults to `32`):
            Responses per request (see the module docstring).
        max_response_chars (`int`, *optional*, defaults to `4000`):
            Each response is cut to its last `max_response_chars` characters (the end holds the answer).
    """

    url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_seconds: float = 120.0
    max_tokens: int = 1024
    temperature: float = 0.0
    max_responses: int = 32
    max_response_chars: int = 4000

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"JudgeConfig.url must be an http(s) URL, got {self.url!r}")
        if self.max_responses < 1 or self.max_response_chars < 1:
            raise ValueError("JudgeConfig.max_responses and max_response_chars must be >= 1")

    @property
    def endpoint(self) -> str:
        """`str`: the chat-completions URL."""
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def build_messages(question: str, responses: Sequence[str], max_chars: int) -> list[dict[str, str]]:
    """The chat messages of one request: the system prompt, then the problem and the numbered responses."""
    parts = [f"Problem:\n{question.strip()}"]
    for number, response in enumerate(responses, start=1):
        text = response if len(response) <= max_chars else "..." + response[-max_chars:]
        parts.append(f"Solution {number}:\n{text.strip()}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_labels(content: str, expected: int) -> list[str]:
    """
    The labels in a judge reply: a JSON object with a `labels` list (code fences and surrounding text allowed).

    Returns:
        `list[str]`: `expected` labels, stripped and lower-cased.

    Raises:
        JudgeError: if no such object is found or the count differs.

    >>> parse_labels('```json\\n{"labels": ["Sign error", "sign error "]}\\n```', 2)
    ['sign error', 'sign error']
    """
    match = re.search(r"\{.*\}", content, flags=re.DOTALL)
    try:
        labels = json.loads(match.group(0))["labels"] if match else None
    except (json.JSONDecodeError, KeyError, TypeError):
        labels = None
    if not isinstance(labels, list) or len(labels) != expected:
        raise JudgeError(f"expected a JSON object with {expected} labels, got: {content[:300]!r}")
    return [" ".join(str(label).split()).lower() for label in labels]


class LLMJudge:
    """
    Client of an OpenAI-compatible chat-completions endpoint that labels reasoning patterns.

    Args:
        config (`JudgeConfig`): endpoint and request options.
    """

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config

    def _post(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.config.endpoint, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as reply:
                return json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            raise JudgeError(f"judge endpoint returned HTTP {err.code}: {err.read()[:300]!r}") from err
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as err:
            raise JudgeError(f"judge endpoint {self.config.endpoint} failed: {err}") from err

    def label(self, question: str, responses: Sequence[str]) -> list[str]:
        """
        Pattern labels of responses to one problem (one request per `max_responses` of them).

        Raises:
            JudgeError: when the endpoint fails or replies with the wrong number of labels.
        """
        labels: list[str] = []
        size = self.config.max_responses
        if len(responses) > size:
            logger.warning("%d responses in one group: labels of different requests are not aligned", len(responses))
        for start in range(0, len(responses), size):
            chunk = list(responses[start : start + size])
            payload = {
                "model": self.config.model,
                "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens,
                "messages": build_messages(question, chunk, self.config.max_response_chars),
            }
            reply = self._post(payload)
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as err:
                raise JudgeError(f"unexpected reply shape: {str(reply)[:300]}") from err
            labels.extend(parse_labels(str(content), len(chunk)))
        return labels


def judge_records(
    records: Sequence[Mapping[str, Any]], judge: LLMJudge, skip_errors: bool = False
) -> list[dict[str, Any]]:
    """
    Copies of the records with a `pattern` label on every wrong record that has `question` and `response`.

    Args:
        records (`Sequence[Mapping]`): analysis records.
        judge (`LLMJudge`): the client.
        skip_errors (`bool`, *optional*, defaults to `False`): on a `JudgeError`, log it and leave that group's
            patterns `None` instead of raising.

    Returns:
        `list[dict]`: in input order.

    Raises:
        JudgeError: from the judge, unless `skip_errors`.
    """
    out = [dict(record) for record in records]
    groups: dict[tuple[int, Any], list[int]] = defaultdict(list)
    for row, record in enumerate(out):
        if not record["correct"] and record.get("response") is not None and record.get("question"):
            groups[(int(record["step"]), record["prompt_id"])].append(row)
    for (step, prompt_id), rows in groups.items():
        try:
            labels = judge.label(out[rows[0]]["question"], [out[r]["response"] for r in rows])
        except JudgeError as err:
            if not skip_errors:
                raise
            logger.warning("judge failed on step %s prompt %r: %s", step, prompt_id, err)
            continue
        for row, label in zip(rows, labels, strict=True):
            out[row]["pattern"] = label
    return out

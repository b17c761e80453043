"""The LLM judge against a local fake OpenAI-compatible server (http.server in a thread); never a real network call."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from verl_meds.analysis.diversity import step_metrics
from verl_meds.analysis.judge import JudgeConfig, JudgeError, LLMJudge, judge_records, parse_labels


class FakeChatServer:
    """Labels each solution by the operation it uses: '+' -> 'adds', '*' -> 'multiplies', else 'guesses'."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if server.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                solutions = re.split(r"\n\nSolution \d+:\n", body["messages"][1]["content"])[1:]
                labels = ["Adds" if "+" in s else "multiplies" if "*" in s else "guesses" for s in solutions]
                if server.mode == "short":
                    labels = labels[:-1]
                content = "Here you go:\n```json\n" + json.dumps({"labels": labels}) + "\n```"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def records():
    question = "What is 2+3*4?"
    rows = [
        ("2+3=5, 5*4=20", False),
        ("2+12=14", True),
        ("3*4=12, 12+2=14... no, 15", False),
        ("17", False),
        ("2+3=5", False),
    ]
    out = [
        {"step": 0, "prompt_id": "p", "correct": c, "answer": None, "question": question, "response": r}
        for r, c in rows
    ]
    out.append({"step": 0, "prompt_id": "q", "correct": False, "answer": "1", "response": "no question field"})
    return out


def test_judge_labels_wrong_responses_through_the_endpoint(monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test-123")
    with FakeChatServer() as server:
        judge = LLMJudge(JudgeConfig(server.url, "judge-model", api_key_env="FAKE_JUDGE_KEY", max_responses=3))
        labelled = judge_records(records(), judge)
    assert [r.get("pattern") for r in labelled] == ["adds", None, "adds", "guesses", "adds", None]
    assert len(server.requests) == 2  # 4 wrong responses of prompt p, at most 3 per request
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test-123"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0.0
    user = first["body"]["messages"][1]["content"]
    assert user.startswith("Problem:\nWhat is 2+3*4?") and "Solution 3:\n17" in user and "2+12=14" not in user
    assert first["body"]["messages"][0]["role"] == "system"
    (metrics,) = step_metrics(labelled)
    assert metrics["distinct_patterns"] == 2 and metrics["distinct_patterns_frac"] == pytest.approx(2 / 4)


def test_judge_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer("short") as server:
        with pytest.raises(JudgeError, match="expected a JSON object with 4 labels"):
            judge_records(records(), LLMJudge(JudgeConfig(server.url, "m")))
        assert server.requests[0]["auth"] is None  # no key in the environment: no header
    with FakeChatServer("error") as server:
        judge = LLMJudge(JudgeConfig(server.url + "/chat/completions", "m", timeout_seconds=10))
        with pytest.raises(JudgeError, match="HTTP 500"):
            judge.label("q", ["a"])
        skipped = judge_records(records(), judge, skip_errors=True)
        assert all(r.get("pattern") is None for r in skipped)
    with pytest.raises(ValueError, match="http"):
        JudgeConfig("127.0.0.1:8000", "m")
    assert parse_labels('{"labels": ["A  b", "c"]}', 2) == ["a b", "c"]
    with pytest.raises(JudgeError):
        parse_labels("no json here", 1)

"""Jobs files as `apply` reads them and `export` writes them, without a service."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from scheduler_svc import jobs_file
from scheduler_svc.jobs_as_code import unchanged, wants_detailed_exitcode
from scheduler_svc.jobs_file import FileError

pytestmark = pytest.mark.timeout(30)

FULL = textwrap.dedent(
    """\
    # yaml-language-server: $schema=jobs.schema.json
    x-webhook: &webhook
      max_attempts: 5
      timeout_s: 10
    jobs:
      - key: billing/nightly-invoices
        name: nightly invoices
        schedule: "0 3 * * *"
        timezone: Europe/Paris
        attributes: {batch: 500, note: "costs $${AMOUNT} at most"}
        target:
          type: http
          url: https://hooks.example.com/invoices
          method: POST
          headers:
            Authorization: "Bearer ${HOOK_TOKEN}"
          body: {kind: invoices}
        <<: *webhook
        backoff_s: 30
        backoff_max_s: 600
        misfire_policy: skip
        misfire_grace_s: 120
        overlap: allow
        paused: false
      - key: reports.weekly
        name: weekly report
        schedule: "@weekly"
        target: {type: handler, name: send_report}
      - key: ping
        name: ping
        interval: "@every 5m"
    """
)


def load(text: str, **environ: str) -> tuple[list[jobs_file.Item], list[str]]:
    items, errors = jobs_file.load(text, environ)
    return items, [error.format("jobs.yaml") for error in errors]


def test_a_full_file_reads_into_bodies_to_put() -> None:
    items, errors = load(FULL, HOOK_TOKEN="s3cret")
    assert errors == []
    assert [item.key for item in items] == ["billing/nightly-invoices", "reports.weekly", "ping"]
    first = items[0]
    assert (first.path, first.line) == ("jobs[0]", 6)
    assert "key" not in first.body
    assert first.body["target"]["headers"] == {"Authorization": "Bearer s3cret"}
    assert first.body["attributes"]["note"] == "costs ${AMOUNT} at most"
    assert (first.body["max_attempts"], first.body["timeout_s"]) == (5, 10)  # the anchor's
    assert "paused" not in items[1].body  # left out: the job keeps its status
    assert items[2].body == {"name": "ping", "interval": "@every 5m"}


def test_every_error_is_reported_with_its_place() -> None:
    text = textwrap.dedent(
        """\
        jobs:
          - key: a
            name: a
            schedule: "61 * * * *"
          - key: b
            name: b
            schedule: "@daily"
            max_attempts: 0
          - key: c
            name: c
            schedule: "@daily"
            colour: red
          - key: a
            name: again
            schedule: "@hourly"
          - key: d
            name: d
            schedule: "@daily"
            target: {type: http, url: "https://example.com/${NOT_SET_ANYWHERE}"}
        """
    )
    items, errors = load(text)
    assert items == []
    assert errors == [
        "jobs.yaml:4: jobs[0].schedule: invalid minute field '61'",
        "jobs.yaml:8: jobs[1].max_attempts: expected `int` >= 1",
        "jobs.yaml:12: jobs[2].colour: unknown field",
        "jobs.yaml:13: jobs[3].key: duplicate key 'a' (also jobs[0])",
        "jobs.yaml:19: jobs[4].target.url: environment variable NOT_SET_ANYWHERE is not set",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "jobs: [",
            "jobs.yaml:2: not valid YAML: did not find expected node content",
        ),
        ("- a", "jobs.yaml:1: expected a mapping with a `jobs:` list at the top"),
        ("jobs: {}\n", "jobs.yaml:1: jobs: expected a list of jobs, got a mapping"),
        ("jobs: []\nother: 1\n", "jobs.yaml:2: other: unknown top-level key (only `jobs` and x-…)"),
        ("jobs: [3]\n", "jobs.yaml:1: jobs[0]: expected a job (a mapping), got an int"),
        (
            "jobs:\n- {key: a, name: a, schedule: '@daily', managed_by: me}\n",
            "jobs.yaml:2: jobs[0].managed_by: is set by apply (its --owner): leave it out",
        ),
        (
            "jobs:\n- {key: a, name: a, schedule: '@daily', timezon: UTC}\n",
            "jobs.yaml:2: jobs[0].timezon: unknown field (did you mean `timezone`?)",
        ),
        ("jobs:\n- {key: a, name: a}\n", "jobs.yaml:2: jobs[0]: missing required field `schedule`"),
        (
            "jobs:\n- key: a\n  name: a\n  name: b\n  schedule: '@daily'\n",
            "jobs.yaml:4: jobs[0].name: appears twice in this mapping",
        ),
        (
            "jobs:\n- {key: 'has space', name: a, schedule: '@daily'}\n",
            "jobs.yaml:2: jobs[0].key: expected `str` matching regex "
            "'^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$'",
        ),
        (
            "jobs:\n- {key: a, name: a, schedule: '@daily', timezone: Mars/Olympus}\n",
            "jobs.yaml:2: jobs[0].timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "jobs:\n- {key: a, name: '${}', schedule: '@daily'}\n",
            "jobs.yaml:2: jobs[0].name: ${} is no variable name (for a literal '${', write '$${')",
        ),
        (
            "jobs:\n- key: a\n  name: a\n  schedule: '@daily'\n"
            "  target: {type: http, url: u, x: 1}\n",
            "jobs.yaml:5: jobs[0].target.x: unknown field",
        ),
    ],
)
def test_a_bad_file_is_one_clear_line(text: str, error: str) -> None:
    assert load(text)[1] == [error]


def test_variables_are_read_from_the_environment_in_any_string() -> None:
    text = (
        "jobs:\n- key: a\n  name: ${NAME}-job\n  schedule: '@daily'\n"
        "  attributes: {list: ['${NAME}', '$${NAME}', '$$${NAME}', 'cost: $5']}\n"
    )
    [item], errors = load(text, NAME="x")
    assert errors == []
    assert item.body["name"] == "x-job"
    assert item.body["attributes"]["list"] == ["x", "${NAME}", "$${NAME}", "cost: $5"]
    empty = load(text, NAME="")[0][0].body["name"]
    assert empty == "-job"  # set, though empty: not an error


def test_an_export_reads_back_as_it_was() -> None:
    shown = {
        "id": 7,
        "key": "b",
        "name": "uses ${HOME} literally",
        "schedule": "@daily",
        "interval": "@daily",
        "timezone": "UTC",
        "attributes": {"note": "$${x}"},
        "target": {
            "type": "http",
            "url": "https://e.example",
            "method": "POST",
            "headers": {"Authorization": "***"},
            "body": None,
        },
        "max_attempts": 3,
        "backoff_s": 10.0,
        "backoff_max_s": 3600.0,
        "timeout_s": 30,
        "misfire_policy": "run_once",
        "misfire_grace_s": 60,
        "overlap": "forbid",
        "tags": ["nightly"],
        "jitter_s": 1.5,
        "alerts": {"on": ["failed"]},
        "status": "paused",
        "managed_by": "apply",
        "version": 3,
        "next_run_at": None,
    }
    text = jobs_file.dump([shown, {**shown, "key": "a", "status": "completed"}])
    assert text.index("key: a") < text.index("key: b")
    items, errors = load(text)
    assert errors == []
    assert [item.key for item in items] == ["a", "b"]
    body = items[1].body
    assert list(body) == [n for n in jobs_file.FIELD_ORDER if n not in {"key", "interval"}]
    assert body["name"] == "uses ${HOME} literally"
    assert body["attributes"] == {"note": "$${x}"}
    assert body["target"]["headers"] == {"Authorization": "***"}
    assert (body["paused"], items[0].body["paused"]) == (True, False)
    assert jobs_file.dump([]) == "jobs: []\n"


def test_the_shipped_schema_is_the_models_and_checks_a_file() -> None:
    shipped = jobs_file.SCHEMA_PATH.read_text()
    assert shipped == jobs_file.schema_text(), (
        "regenerate: python -c 'from scheduler_svc import jobs_file; "
        "jobs_file.SCHEMA_PATH.write_text(jobs_file.schema_text())'"
    )
    schema = json.loads(shipped)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    document = yaml.safe_load(FULL)
    assert list(validator.iter_errors(document)) == []
    document["jobs"][1]["colour"] = "red"
    del document["jobs"][2]["key"]
    del document["jobs"][0]["schedule"]
    wrong = sorted(error.message for error in validator.iter_errors(document))
    assert len(wrong) == 3, wrong
    assert any("colour" in message for message in wrong)
    assert any("'key' is a required property" in message for message in wrong)


def test_an_error_formats_as_file_line_path_message() -> None:
    assert FileError("jobs[3].name", "bad\n  thing", 9).format("j.yaml") == (
        "j.yaml:9: jobs[3].name: bad thing"
    )
    assert FileError("", "empty").format("j.yaml") == "j.yaml: empty"


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["apply", "-f", "x", "--detailed-exitcode"], True),
        (["apply", "--detailed"], True),
        (["apply", "--detailed-exitcode=1"], True),
        (["apply", "--dry-run"], False),
        (["jobs", "list", "--detailed-exitcode"], False),
        (["apply", "--d"], False),
    ],
)
def test_a_bad_command_line_exits_1_only_when_asked_for_detailed_codes(
    argv: list[str], wanted: bool
) -> None:
    assert wants_detailed_exitcode(argv) is wanted


def test_unchanged_is_told_from_the_listing_only_when_it_can_be() -> None:
    shown = {
        "id": 1,
        "key": "k",
        "managed_by": "apply",
        "name": "n",
        "schedule": "@daily",
        "interval": "@daily",
        "timezone": "UTC",
        "attributes": {"a": 1},
        "target": {
            "type": "http",
            "url": "https://e.example/",
            "method": "POST",
            "headers": {"Authorization": "***", "X-Plain": "p"},
            "body": None,
        },
        "max_attempts": 3,
        "backoff_s": 10.0,
        "backoff_max_s": 3600.0,
        "timeout_s": 30,
        "misfire_policy": "run_once",
        "misfire_grace_s": 60,
        "overlap": "forbid",
        "tags": [],
        "jitter_s": 0.0,
        "alerts": None,
        "status": "paused",
        "version": 4,
    }
    target = {
        "type": "http",
        "url": "https://e.example/",
        "headers": dict(shown["target"]["headers"]),
    }

    def item(**fields: object) -> jobs_file.Item:
        body = {"name": "n", "schedule": " @daily ", "attributes": {"a": 1}, "target": target}
        return jobs_file.Item("k", {**body, **fields}, "jobs[0]")

    assert unchanged(item(), "apply", shown)
    assert unchanged(item(paused=True, backoff_s=10), "apply", shown)
    assert not unchanged(item(paused=False), "apply", shown)
    assert not unchanged(item(), "ci", shown)  # would take it over
    assert not unchanged(item(timeout_s=31), "apply", shown)
    assert not unchanged(item(attributes={}), "apply", shown)
    clear = {**target, "headers": {"Authorization": "Bearer s3cret", "X-Plain": "p"}}
    assert not unchanged(item(target=clear), "apply", shown)  # only the service knows
    assert not unchanged(item(interval="@daily"), "apply", shown)
    assert not unchanged(item(), "apply", {**shown, "schedule": "@hourly"})


def test_the_example_of_the_docs_is_a_valid_file() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "jobs-as-code.md").read_text()
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    items, errors = load(example, INVOICES_TOKEN="t")
    assert errors == []
    assert len(items) == 3
    schema = json.loads(jobs_file.SCHEMA_PATH.read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(example))) == []

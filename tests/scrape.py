"""Real scrapes of a Prometheus endpoint for the tests, parsed by prometheus_client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` from one real scrape of ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple, float]], sample: str, **labels: str) -> float:
    """The one value of ``sample`` whose labels include ``labels``."""
    found = [
        v
        for key, v in samples.get(sample, {}).items()
        if set(labels.items()) <= set(dict(key).items())
    ]
    assert len(found) == 1, f"{sample} {labels}: {samples.get(sample)}"
    return found[0]

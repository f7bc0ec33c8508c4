import pytest

from bento.settings import Settings, available_cpus


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model_tag == "catdog-classifier:latest"
    assert settings.workers == settings.batch_workers == available_cpus()
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_every_field_is_read_from_its_variable():
    environ = {"CATDOG_MODEL_TAG": "catdog-classifier:abc", "CATDOG_MAX_IN_FLIGHT_BYTES": "123"}
    environ |= {"CATDOG_WORKERS": "3", "CATDOG_INFERENCE_LOG_QUEUE": "0", "CATDOG_MAX_PIXELS": ""}
    settings = Settings.from_env(environ)
    assert settings.model_tag == "catdog-classifier:abc"
    assert (settings.max_in_flight_bytes, settings.workers) == (123, 3)
    assert settings.inference_log_queue == 0  # 0 turns the log off
    assert settings.max_pixels == Settings().max_pixels  # empty means unset


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("CATDOG_WORKERS", "0", ">= 1"),
        ("CATDOG_MAX_UPLOAD_BYTES", "ten", "an integer"),
        ("CATDOG_INFERENCE_LOG_QUEUE", "-1", ">= 0"),
        ("CATDOG_NEITHER_THRESHOLD", "high", "between 0 and 1"),
        ("CATDOG_NEITHER_THRESHOLD", "1.5", "between 0 and 1"),
        ("CATDOG_NEITHER_THRESHOLD", "nan", "between 0 and 1"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name, raw, message):
    with pytest.raises(ValueError, match=message) as caught:
        Settings.from_env({name: raw})
    assert name in str(caught.value)


def test_neither_threshold_is_unset_by_default_and_read_as_a_probability():
    assert Settings.from_env({}).neither_threshold is None  # the model's own threshold
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": ""}).neither_threshold is None
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": "0.35"}).neither_threshold == 0.35
    assert Settings.from_env({"CATDOG_NEITHER_THRESHOLD": "0"}).neither_threshold == 0.0


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().workers = 5

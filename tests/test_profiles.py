"""The profile object the chapters pass whole (`ioi_utils.profiles.Profile`)."""

import dataclasses

import pytest

from ioi_utils import profiles
from ioi_utils.profiles import PROFILES, Profile


def test_every_profile_is_exactly_the_fields_of_a_profile():
    """A parameter the runner injects and no Profile field reads (or the reverse) would be lost on the way."""
    fields = {f.name for f in dataclasses.fields(Profile)}
    for name, params in PROFILES.items():
        assert set(params) == fields, name
        p = Profile.of(params)
        assert p.profile == name and p.clean_epochs == tuple(params["clean_epochs"])


def test_a_chapter_namespace_overrides_its_profile_and_the_rest_is_read_from_it():
    p = Profile.of({"profile": "offline", "n_cmap": 7, "clean_epochs": [1], "s": object(), "execution_info": {}})
    assert p.n_cmap == 7 and p.clean_epochs == (1,)  # given: read, lists as tuples
    assert p.n_prompts == PROFILES["offline"]["n_prompts"] and p.model_name == "smollm2-135m"  # not given: the profile's
    second = p.second_model()
    assert (second.model_name, second.n_prompts, second.n_eval, second.n_discovery) == (
        p.second_model_name, p.second_n_prompts, p.second_n_eval, p.second_n_discovery)
    assert second.n_cmap == 7 and second.profile == "offline"


def test_an_unknown_profile_is_one_line():
    with pytest.raises(ValueError, match=r"unknown profile 'nope'; choose one of offline, paper, smoke"):
        Profile.of({"profile": "nope"})
    with pytest.raises(ValueError, match="unknown profile None"):
        Profile.of({})
    assert profiles.PROFILES is PROFILES

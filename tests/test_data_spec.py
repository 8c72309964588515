"""Dataset specs and the data config: both written forms, option checks, and the leak rules."""

import re

import pytest
from pydantic import ValidationError

from raymmft.data import DataConfig, DatasetSpec
from raymmft.data import shapes as world


def spec(value):
    return DatasetSpec.model_validate(value)


def error_line(message: str) -> str:
    """A regex matching one pydantic error line whose text is exactly ``message``."""
    return rf"(?m)^  Value error, {re.escape(message)} \["


def test_string_and_mapping_forms_give_equal_specs():
    text = spec("builtin:shapes?split=val&classes=red circle,blue square&per_class=7&seed=3")
    mapping = spec(
        {
            "uri": "builtin:shapes",
            "split": "val",
            "classes": ["red circle", "blue square"],
            "per_class": 7,
            "seed": 3,
        }
    )
    assert text == mapping
    assert text.classes == ("red circle", "blue square")
    assert text.per_class == 7 and isinstance(text.per_class, int)
    assert hash(text) == hash(mapping)


def test_string_form_round_trips_through_str():
    original = spec("parquet:/data/x?split=test&classes=near_ood&skip_corrupt=true&label_column=y")
    assert (
        str(original)
        == "parquet:/data/x?split=test&classes=near_ood&label_column=y&skip_corrupt=true"
    )
    assert spec(str(original)) == original
    assert original.kind == "parquet" and original.location == "/data/x"
    assert original.skip_corrupt is True


def test_mapping_form_keeps_a_query_inside_an_object_store_uri():
    s3 = spec({"uri": "parquet:s3://bucket/shards?region=eu-west-1", "label_column": "y"})
    assert s3.location == "s3://bucket/shards?region=eu-west-1"
    assert s3.label_column == "y"


def test_unknown_option_is_named():
    with pytest.raises(ValidationError, match=r"(?m)^colour\n  Extra inputs are not permitted"):
        spec("builtin:shapes?split=val&colour=red")


def test_option_of_another_kind_is_rejected():
    with pytest.raises(
        ValidationError, match=error_line("option 'image_column' does not apply to builtin:shapes")
    ):
        spec({"uri": "builtin:shapes", "split": "val", "image_column": "img"})
    with pytest.raises(
        ValidationError, match=error_line("option 'label_column' does not apply to imagefolder:")
    ):
        spec("imagefolder:/data?label_column=y")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("builtin:mnist", "unknown builtin dataset 'mnist'; expected builtin:shapes or "
         "builtin:digits (in the mapping form, options go in their own keys)"),
        ("webdataset:/x", "unknown dataset 'webdataset:/x'; expected builtin:shapes, "
         "builtin:digits, imagefolder:PATH or parquet:URI"),
        ("imagefolder:", "dataset 'imagefolder:' names no location; expected imagefolder:PATH"),
    ],
)  # fmt: skip
def test_bad_uri_messages(value, message):
    with pytest.raises(ValidationError, match=error_line(message)):
        spec(value)


def test_shapes_needs_a_split_and_known_class_names():
    with pytest.raises(
        ValidationError, match=error_line("builtin:shapes needs split: train, val or test")
    ):
        spec("builtin:shapes")
    with pytest.raises(
        ValidationError,
        match=error_line(
            "unknown class 'grey circle' for builtin:shapes; expected names like 'red circle' "
            "(106 classes)"
        ),
    ):
        spec("builtin:shapes?split=val&classes=red circle,grey circle")


def test_named_selection_must_exist_for_the_kind():
    with pytest.raises(
        ValidationError,
        match=error_line(
            "classes 'far_ood' is not defined for builtin:digits (named selections: id, "
            "near_ood, all; or a list of class names)"
        ),
    ):
        spec("builtin:digits?classes=far_ood")


def test_other_option_errors():
    with pytest.raises(ValidationError, match=error_line("set per_class or num_samples, not both")):
        spec("builtin:digits?per_class=3&num_samples=9")
    with pytest.raises(
        ValidationError,
        match=error_line("val_fraction + test_fraction must be below 1, got 0.5 + 0.5"),
    ):
        spec("builtin:digits?val_fraction=0.5&test_fraction=0.5")
    with pytest.raises(ValidationError, match=error_line("class 'one' listed twice")):
        spec("builtin:digits?classes=one,two,one")
    with pytest.raises(
        ValidationError,
        match=error_line(
            "cannot parse options 'split' of dataset 'builtin:digits?split': expected key=value "
            "pairs joined by &"
        ),
    ):
        spec("builtin:digits?split")


def test_builtin_named_selections_resolve_without_io():
    assert spec("builtin:shapes?split=val&classes=id").builtin_classes() == (
        world.DEFAULT_ID_CONCEPTS
    )
    near = spec("builtin:shapes?split=val&classes=near_ood").builtin_classes()
    assert len(near) == 100 - 12 and not set(near) & set(world.DEFAULT_ID_CONCEPTS)
    custom_near = spec("builtin:shapes?split=val&classes=near_ood").builtin_classes(["red circle"])
    assert len(custom_near) == 99 and "red circle" not in custom_near
    assert spec("builtin:digits?classes=near_ood").builtin_classes() == (
        "six",
        "seven",
        "eight",
        "nine",
    )
    assert spec("imagefolder:/x").builtin_classes() is None


SHAPES_SETUP = {
    "id_train": "builtin:shapes?split=train&classes=id",
    "id_val": "builtin:shapes?split=val&classes=id",
    "ood_val": [
        "builtin:shapes?split=val&classes=near_ood",
        "builtin:shapes?split=val&classes=far_ood",
    ],
    "ood_test": [
        "builtin:shapes?split=test&classes=near_ood",
        "builtin:shapes?split=test&classes=far_ood",
    ],
}


def config(**changes):
    return DataConfig.model_validate({**SHAPES_SETUP, **changes})


def test_a_separated_setup_is_accepted():
    cfg = config(num_workers=2)
    assert [s.split for s in cfg.ood_test] == ["test", "test"]
    assert cfg.num_workers == 2
    digits = DataConfig.model_validate(
        {
            "id_train": "builtin:digits?split=train&classes=id",
            "id_val": "builtin:digits?split=val&classes=id",
            "ood_val": ["builtin:digits?split=val&classes=near_ood"],
            "ood_test": ["builtin:digits?split=test&classes=near_ood"],
        }
    )
    assert digits.ood_val[0].builtin_classes() == ("six", "seven", "eight", "nine")


def test_ood_test_reused_as_ood_val_is_a_leak():
    leaky = "builtin:shapes?split=val&classes=far_ood"
    with pytest.raises(
        ValidationError,
        match=error_line(
            f"ood_test[1] ({leaky}) overlaps ood_val[1] ({leaky}): scoring the search on OoD "
            f"test images leaks them into the chosen configuration; use another split, seed or "
            f"source"
        ),
    ):
        config(ood_test=[SHAPES_SETUP["ood_test"][0], leaky])


def test_carved_splits_leak_unless_carved_the_same_way():
    base = {
        "id_train": "imagefolder:/data/in?split=train",
        "id_val": "imagefolder:/data/in?split=val",
    }
    ok = DataConfig.model_validate(
        {
            **base,
            "ood_val": ["imagefolder:/data/out?split=val"],
            "ood_test": ["imagefolder:/data/out/?split=test"],
        }
    )
    assert ok.ood_test[0].normalised_uri() == ok.ood_val[0].normalised_uri()
    for test in ("imagefolder:/data/out", "imagefolder:/data/out?split=test&seed=1"):
        with pytest.raises(ValidationError, match="leaks"):
            DataConfig.model_validate(
                {**base, "ood_val": ["imagefolder:/data/out?split=val"], "ood_test": [test]}
            )
    # Another shapes seed draws different images: not a leak.
    config(ood_test=["builtin:shapes?split=val&classes=near_ood&seed=5"])


def test_ood_classes_must_not_be_id_classes():
    with pytest.raises(
        ValidationError,
        match=error_line(
            "ood_val[0] (builtin:shapes?split=val&classes=red circle,red square) shares classes "
            "with id_train (builtin:shapes?split=train&classes=id): OoD classes must not be ID "
            "classes (use classes: near_ood, far_ood or a list)"
        ),
    ):
        config(ood_val=["builtin:shapes?split=val&classes=red circle,red square"])
    # near_ood is the complement of the ID training classes, whatever they are.
    custom = config(
        id_train="builtin:shapes?split=train&classes=red circle,blue star",
        id_val="builtin:shapes?split=val&classes=red circle,blue star",
    )
    assert "red circle" not in custom.ood_val[0].builtin_classes(["red circle", "blue star"])
    with pytest.raises(ValidationError, match="shares classes with id_train"):
        DataConfig.model_validate(
            {"id_train": "imagefolder:/d?split=train", "id_val": "imagefolder:/d?split=val",
             "ood_val": ["imagefolder:/d?split=val"]}
        )  # fmt: skip


def test_id_val_must_not_be_training_images_and_must_share_classes():
    with pytest.raises(
        ValidationError,
        match=error_line(
            "id_val (builtin:shapes?split=train&classes=id) overlaps id_train "
            "(builtin:shapes?split=train&classes=id): validation images would be training "
            "images (a leak); use another split, seed or source"
        ),
    ):
        config(id_val="builtin:shapes?split=train&classes=id")
    with pytest.raises(ValidationError, match="id_val classes .* differ from id_train classes"):
        config(id_val="builtin:shapes?split=val&classes=red circle")

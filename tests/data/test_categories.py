import torch

from instseg.data.categories import CategoryMap


def test_labels_are_contiguous_in_category_id_order_and_map_back():
    categories = CategoryMap.from_coco_categories(
        [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    )
    assert categories.names == ("person", "dog", "toothbrush")
    assert categories.num_classes == 4
    labels = categories.to_labels([18, 90, 1])
    assert labels.tolist() == [2, 3, 1] and labels.dtype == torch.int64
    assert categories.to_category_ids(labels) == [18, 90, 1]

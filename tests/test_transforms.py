"""The image-feature transforms a classifier carries survive its saved state."""

import numpy as np
import torch
import torch.nn.functional as F

from gcctl.methods.base import Classifier
from gcctl.methods.transforms import Projection


def test_a_projected_classifier_scores_the_same_after_a_round_trip_through_its_state():
    torch.manual_seed(0)
    direction = F.normalize(torch.randn(8), dim=0)
    remove = torch.eye(8) - torch.outer(direction, direction)
    classifier = Classifier(weight=torch.randn(3, 8), bias=torch.zeros(3), prompt_class=torch.arange(3),
                            num_classes=3, transform=Projection(remove))
    features = torch.randn(5, 8)

    restored = Classifier.from_state(classifier.state(), torch.device("cpu"))

    assert np.allclose(restored.scores(features), classifier.scores(features))
    # The projection acts: scores ignore the removed direction entirely.
    shifted = F.normalize(features, dim=-1) + 3 * direction
    assert np.allclose(classifier.scores(shifted), classifier.scores(features), atol=1e-5)

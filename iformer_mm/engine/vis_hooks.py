"""``tools/test.py --interval`` for detection.

mmdet 3.3's ``DetVisualizationHook`` paints every test image whatever its
``interval`` (the interval applies to validation only); mmpretrain's and
mmseg's hooks honour it in testing. :class:`IntervalDetVisualizationHook`
paints every ``interval``-th test image, counted over the whole test set as
mmpretrain counts. Imported only for detection configs (it needs mmdet).
"""
from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class IntervalDetVisualizationHook(DetVisualizationHook):
    """``DetVisualizationHook`` that paints every ``interval``-th test
    image (images 0, interval, 2 * interval, ...).

    Args:
        **kwargs: the arguments of ``DetVisualizationHook``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._seen = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict,
                        outputs) -> None:
        keep = []
        for sample in outputs:
            if self._seen % self.interval == 0:
                keep.append(sample)
            self._seen += 1
        if keep:
            super().after_test_iter(runner, batch_idx, data_batch, keep)


def register_interval_det_hook() -> str:
    """The registered type name of :class:`IntervalDetVisualizationHook`."""
    return 'mmdet.IntervalDetVisualizationHook'

from keras.saving import load_weights, save_weights
from keras_hub.models import Task


class TIPSv2Task(Task):
    """A KerasHub `Task` whose presets hold the task's own weights alone.

    KerasHub's `Task.save_task_weights` skips the backbone (a preset keeps
    it in model.weights.h5) but writes the optimizer's state too, which no
    preset needs: a compiled task's task.weights.h5 would carry it. Here
    both are left out, on saving and on loading.
    """

    def _not_task_weights(self):
        skipped = list(self.backbone._flatten_layers())
        if self.optimizer is not None:
            skipped.append(self.optimizer)
        return skipped

    def save_task_weights(self, filepath):
        """Saves the task's own weights (no backbone, no optimizer state)."""
        save_weights(self, filepath, objects_to_skip=self._not_task_weights())

    def load_task_weights(self, filepath):
        """Loads the weights saved by `save_task_weights`."""
        load_weights(self, filepath, objects_to_skip=self._not_task_weights())

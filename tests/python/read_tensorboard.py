"""Reads a run folder's TensorBoard event files with TensorBoard's own reader and prints what
it found, as JSON: scalars, images, text and the hparams plugin's session.

Usage: read_tensorboard.py RUN_DIR
"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

run = sys.argv[1]
ea = event_accumulator.EventAccumulator(run, size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
ea.Reload()
tags = ea.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height] for e in ea.Images(t)] for t in tags["images"]},
}
# Text and hparams live in plugin data, which the plugin-aware accumulator reads.
pa = plugin_event_accumulator.EventAccumulator(run, size_guidance={"tensors": 0})
pa.Reload()
plugins = pa.ActivePlugins()
text_tags = pa.PluginTagToContent("text") if "text" in plugins else {}
out["text"] = {t: [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in pa.Tensors(t)] for t in text_tags}
hparams = {}
for tag, content in (pa.PluginTagToContent("hparams") if "hparams" in plugins else {}).items():
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    kind = data.WhichOneof("data")
    if kind == "session_start_info":
        hparams["start"] = {
            k: (v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value") else v.bool_value)
            for k, v in data.session_start_info.hparams.items()
        }
    elif kind == "experiment":
        hparams["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
    elif kind == "session_end_info":
        hparams["status"] = data.session_end_info.status
out["hparams"] = hparams
print(json.dumps(out))

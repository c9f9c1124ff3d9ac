"""torchvision's WSOL backbones (docs/design.md §2), built in torch: the reference of
`make_golden.py` (the golden files) and `test_parity_torch.py` (with torch installed).

Each builder returns `(model, forward, new_layers)`: the modified torchvision model,
`forward(x) -> {tap name: NCHW tensor}` (every stage output of the flax backbone, in
order), and the layers torchvision lacks ({name: Conv2d}, left at torch's init).
Imports torch and torchvision only.
"""

import torch
import torchvision

F = torch.nn.functional


def resnet50_wsol():
  m = torchvision.models.resnet50(weights=None)
  for layer in (m.layer3, m.layer4):  # stride 1: on conv2 (v1.5) and the projection
    layer[0].conv2.stride = (1, 1)
    layer[0].downsample[0].stride = (1, 1)

  def forward(x):
    taps = {}
    x = taps["stem"] = m.relu(m.bn1(m.conv1(x))).clone()
    x = m.maxpool(x)
    for name in ("layer1", "layer2", "layer3", "layer4"):
      x = taps[name] = getattr(m, name)(x).clone()
    return taps
  return m, forward, {}


def vgg16_wsol():
  m = torchvision.models.vgg16(weights=None)
  conv6 = torch.nn.Conv2d(512, 1024, 3, padding=1)
  pools = [i for i, layer in enumerate(m.features) if isinstance(layer, torch.nn.MaxPool2d)]
  assert pools == [4, 9, 16, 23, 30], pools
  ends = {3: "block1", 8: "block2", 15: "block3", 22: "block4", 29: "block5"}

  def forward(x):
    taps = {}
    for i, layer in enumerate(m.features):
      if i in (23, 30):  # pool4, pool5 removed
        continue
      x = layer(x)
      if i in ends:
        taps[ends[i]] = x.clone()
    taps["conv6"] = F.relu(conv6(x))
    return taps
  return m, forward, {"conv6": conv6}


def inceptionv3_wsol():
  m = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
  for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_4a_3x3"):
    getattr(m, name).conv.padding = (1, 1)
  for conv in (m.Mixed_6a.branch3x3, m.Mixed_6a.branch3x3dbl_3):  # stride 2 -> 1, pad 1
    conv.conv.stride, conv.conv.padding = (1, 1), (1, 1)
  spg = {"SPG_A3_1b": torch.nn.Conv2d(768, 1024, 3, padding=1),
         "SPG_A3_2b": torch.nn.Conv2d(1024, 1024, 3, padding=1)}
  used = [getattr(m, n) for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3",
                                  "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d",
                                  "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e")]
  for conv in (c for u in used for c in u.modules() if isinstance(c, torch.nn.Conv2d)):
    if conv.kernel_size == (3, 3):  # every 3x3 conv padded 1
      assert conv.padding == (1, 1), conv

  def pool(x):  # every stem max-pool: 3x3/2, padding 1, ceil mode
    return F.max_pool2d(x, 3, 2, 1, ceil_mode=True)

  def mixed_6a(x):
    b = m.Mixed_6a
    return torch.cat([b.branch3x3(x), b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))),
                      F.max_pool2d(x, 3, 1, 1)], 1)

  stages = [
      ("Conv2d_1a_3x3", m.Conv2d_1a_3x3), ("Conv2d_2a_3x3", m.Conv2d_2a_3x3),
      ("Conv2d_2b_3x3", m.Conv2d_2b_3x3), ("Conv2d_3b_1x1", lambda x: m.Conv2d_3b_1x1(pool(x))),
      ("Conv2d_4a_3x3", m.Conv2d_4a_3x3), ("Mixed_5b", lambda x: m.Mixed_5b(pool(x))),
      ("Mixed_5c", m.Mixed_5c), ("Mixed_5d", m.Mixed_5d), ("Mixed_6a", mixed_6a),
      ("Mixed_6b", m.Mixed_6b), ("Mixed_6c", m.Mixed_6c), ("Mixed_6d", m.Mixed_6d),
      ("Mixed_6e", m.Mixed_6e),
      ("SPG_A3_1b", lambda x: F.relu(spg["SPG_A3_1b"](x))),  # Dropout: identity in eval
      ("SPG_A3_2b", lambda x: F.relu(spg["SPG_A3_2b"](x))),
  ]

  def forward(x):
    taps = {}
    for name, fn in stages:
      x = taps[name] = fn(x).clone()
    return taps
  return m, forward, spg


BUILD = {"resnet50": resnet50_wsol, "vgg16": vgg16_wsol, "inceptionv3": inceptionv3_wsol}

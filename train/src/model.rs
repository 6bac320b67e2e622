//! ResNet in tch, built from an [`Arch`] row, with torchvision's parameter names so that
//! torchvision state dicts load as they are and ours load into torchvision.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::arch::{Arch, Block};
use crate::error::WeightsError;

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// A named tensor of the model: a trainable parameter or a buffer (BatchNorm statistics).
pub struct Entry {
    pub name: String,
    pub tensor: Tensor,
    pub trainable: bool,
}

struct Builder {
    device: Device,
    entries: Vec<Entry>,
}

impl Builder {
    fn add(&mut self, name: String, tensor: Tensor, trainable: bool) -> Tensor {
        let tensor = if trainable {
            tensor.set_requires_grad(true)
        } else {
            tensor
        };
        self.entries.push(Entry {
            name,
            tensor: tensor.shallow_clone(),
            trainable,
        });
        tensor
    }

    fn conv(&mut self, prefix: &str, cin: i64, cout: i64, k: i64, stride: i64) -> Conv {
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        let w = Tensor::randn([cout, cin, k, k], (Kind::Float, self.device)) * std;
        Conv {
            weight: self.add(format!("{prefix}.weight"), w, true),
            stride,
            padding: k / 2,
        }
    }

    fn bn(&mut self, prefix: &str, c: i64) -> BatchNorm {
        let d = self.device;
        BatchNorm {
            weight: self.add(
                format!("{prefix}.weight"),
                Tensor::ones([c], (Kind::Float, d)),
                true,
            ),
            bias: self.add(
                format!("{prefix}.bias"),
                Tensor::zeros([c], (Kind::Float, d)),
                true,
            ),
            running_mean: self.add(
                format!("{prefix}.running_mean"),
                Tensor::zeros([c], (Kind::Float, d)),
                false,
            ),
            running_var: self.add(
                format!("{prefix}.running_var"),
                Tensor::ones([c], (Kind::Float, d)),
                false,
            ),
            num_batches_tracked: self.add(
                format!("{prefix}.num_batches_tracked"),
                Tensor::zeros([], (Kind::Int64, d)),
                false,
            ),
        }
    }

    fn linear(&mut self, prefix: &str, fin: i64, fout: i64) -> Linear {
        // torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        let bound = 1.0 / (fin as f64).sqrt();
        let uniform =
            |shape: &[i64]| Tensor::rand(shape, (Kind::Float, self.device)) * (2.0 * bound) - bound;
        let w = uniform(&[fout, fin]);
        let b = uniform(&[fout]);
        Linear {
            weight: self.add(format!("{prefix}.weight"), w, true),
            bias: self.add(format!("{prefix}.bias"), b, true),
        }
    }
}

struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride; 2],
            [self.padding; 2],
            [1, 1],
            1,
        )
    }
}

struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
}

impl BatchNorm {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            let mut n = self.num_batches_tracked.shallow_clone();
            tch::no_grad(|| {
                let _ = n.f_add_scalar_(1);
            });
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct ResBlock {
    convs: Vec<(Conv, BatchNorm)>,
    downsample: Option<(Conv, BatchNorm)>,
}

impl ResBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            y = bn.forward(&conv.forward(&y), train);
            if i < last {
                // In place, as torchvision's `ReLU(inplace=True)`: saves an allocation per call.
                let _ = y.relu_();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x), train),
            None => x.shallow_clone(),
        };
        let _ = y.g_add_(&identity);
        let _ = y.relu_();
        y
    }
}

/// A ResNet classifier.
pub struct ResNet {
    pub arch: &'static Arch,
    pub num_classes: i64,
    pub device: Device,
    conv1: Conv,
    bn1: BatchNorm,
    stages: Vec<Vec<ResBlock>>,
    fc: Linear,
    entries: Vec<Entry>,
}

impl ResNet {
    /// A freshly initialised network (torchvision's initialisation) on `device`.
    pub fn new(arch: &'static Arch, num_classes: i64, device: Device) -> ResNet {
        let mut b = Builder {
            device,
            entries: Vec::new(),
        };
        let conv1 = b.conv("conv1", 3, 64, 7, 2);
        let bn1 = b.bn("bn1", 64);
        let exp = arch.block.expansion();
        let mut cin = 64;
        let mut stages = Vec::new();
        for (s, &blocks) in arch.layers.iter().enumerate() {
            let planes = 64 << s;
            let stride = if s == 0 { 1 } else { 2 };
            let mut stage = Vec::new();
            for i in 0..blocks {
                let p = format!("layer{}.{i}", s + 1);
                let st = if i == 0 { stride } else { 1 };
                let convs = match arch.block {
                    Block::Basic => vec![
                        (
                            b.conv(&format!("{p}.conv1"), cin, planes, 3, st),
                            b.bn(&format!("{p}.bn1"), planes),
                        ),
                        (
                            b.conv(&format!("{p}.conv2"), planes, planes, 3, 1),
                            b.bn(&format!("{p}.bn2"), planes),
                        ),
                    ],
                    Block::Bottleneck => vec![
                        (
                            b.conv(&format!("{p}.conv1"), cin, planes, 1, 1),
                            b.bn(&format!("{p}.bn1"), planes),
                        ),
                        (
                            b.conv(&format!("{p}.conv2"), planes, planes, 3, st),
                            b.bn(&format!("{p}.bn2"), planes),
                        ),
                        (
                            b.conv(&format!("{p}.conv3"), planes, planes * exp, 1, 1),
                            b.bn(&format!("{p}.bn3"), planes * exp),
                        ),
                    ],
                };
                let downsample = (i == 0 && (st != 1 || cin != planes * exp)).then(|| {
                    (
                        b.conv(&format!("{p}.downsample.0"), cin, planes * exp, 1, st),
                        b.bn(&format!("{p}.downsample.1"), planes * exp),
                    )
                });
                stage.push(ResBlock { convs, downsample });
                cin = planes * exp;
            }
            stages.push(stage);
        }
        let fc = b.linear("fc", arch.feature_dim(), num_classes);
        ResNet {
            arch,
            num_classes,
            device,
            conv1,
            bn1,
            stages,
            fc,
            entries: b.entries,
        }
    }

    /// Pooled features, `[batch, feature_dim]`. `train` selects BatchNorm's batch statistics.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = self.bn1.forward(&self.conv1.forward(x), train);
        let _ = y.relu_();
        y = y.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            for block in stage {
                y = block.forward(&y, train);
            }
        }
        y.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Logits, `[batch, num_classes]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.fc.forward(&self.features(x, train))
    }

    /// Logits with the backbone frozen: no graph through it and BatchNorm in eval mode,
    /// so only `fc` learns (the seed's "fixed feature extractor").
    pub fn forward_frozen_backbone(&self, x: &Tensor) -> Tensor {
        let f = tch::no_grad(|| self.features(x, false));
        self.fc.forward(&f)
    }

    /// Every parameter and buffer in torchvision's state-dict order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Trainable tensors, optionally only the classifier head.
    pub fn trainable(&self, head_only: bool) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .filter(|e| e.trainable && (!head_only || e.name.starts_with("fc.")))
            .map(|e| (e.name.clone(), e.tensor.shallow_clone()))
            .collect()
    }

    /// Copies `state` into the model. Returns the names that were skipped because they are
    /// classifier weights of another class count (`replace_head`), else fails on any mismatch.
    pub fn load_state(
        &self,
        state: &HashMap<String, Tensor>,
        replace_head: bool,
    ) -> Result<Vec<String>, WeightsError> {
        let mut missing = Vec::new();
        let mut mis_shaped = Vec::new();
        let mut replaced = Vec::new();
        for e in &self.entries {
            match state.get(&e.name) {
                // Files from before PyTorch 0.4.1 lack the counter; torch fills it in too.
                None if e.name.ends_with("num_batches_tracked") => {}
                None => missing.push(e.name.clone()),
                Some(t) if t.size() != e.tensor.size() => {
                    if replace_head && e.name.starts_with("fc.") {
                        replaced.push(e.name.clone());
                    } else {
                        mis_shaped.push(format!(
                            "{} (file {:?}, model {:?})",
                            e.name,
                            t.size(),
                            e.tensor.size()
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            self.entries.iter().map(|e| e.name.as_str()).collect();
        let mut unexpected: Vec<String> = state
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() || !mis_shaped.is_empty() {
            return Err(WeightsError::Mismatch {
                arch: self.arch.name.to_string(),
                missing,
                unexpected,
                mis_shaped,
            });
        }
        tch::no_grad(|| -> Result<(), WeightsError> {
            for e in &self.entries {
                if replaced.contains(&e.name) {
                    continue;
                }
                if let Some(src) = state.get(&e.name) {
                    let mut dst = e.tensor.shallow_clone();
                    dst.f_copy_(src)?;
                }
            }
            Ok(())
        })?;
        Ok(replaced)
    }

    /// A CPU copy of every entry, in state-dict order.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.tensor.detach().to_device(Device::Cpu).copy(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::by_name;

    #[test]
    fn resnet18_has_torchvision_layout() {
        let m = ResNet::new(by_name("resnet18").unwrap(), 2, Device::Cpu);
        let names: Vec<&str> = m.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), 122);
        assert_eq!(names[0], "conv1.weight");
        assert!(names.contains(&"layer2.0.downsample.1.running_var"));
        assert!(!names.contains(&"layer1.0.downsample.0.weight"));
        assert_eq!(names[names.len() - 2..], ["fc.weight", "fc.bias"]);
        let params: i64 = m
            .trainable(false)
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        // 11.69 M for 1000 classes; with 2 classes: 11_689_512 - 512*998 - 998
        assert_eq!(params, 11_689_512 - 512 * 998 - 998);
        let y = m.forward(
            &Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), [2, 2]);
    }

    #[test]
    fn resnet50_shapes() {
        let m = ResNet::new(by_name("resnet50").unwrap(), 5, Device::Cpu);
        let params: i64 = m
            .trainable(false)
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(params, 25_557_032 - 2048 * 995 - 995);
        assert!(m
            .entries()
            .iter()
            .any(|e| e.name == "layer1.0.downsample.0.weight"));
    }
}

//! Architectures as data: each ResNet is a row of this table, read by the tch model (and by the
//! ONNX exporter), so a new depth is a new entry rather than new code.

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 convolutions with 4× expansion (ResNet-50 and deeper).
    Bottleneck,
}

impl Block {
    pub fn expansion(self) -> i64 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// torchvision's ImageNet weights for an architecture (`IMAGENET1K_V1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    pub url: &'static str,
    /// File name in torch's hub cache; its hash part is a prefix of the file's SHA-256.
    pub file_name: &'static str,
    pub sha256_prefix: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    pub name: &'static str,
    pub block: Block,
    /// Blocks per stage (layer1..layer4).
    pub layers: [usize; 4],
    pub pretrained: Pretrained,
}

impl Arch {
    /// Width of the pooled features that the classifier `fc` takes.
    pub fn feature_dim(&self) -> i64 {
        512 * self.block.expansion()
    }
}

pub const ARCHS: &[Arch] = &[
    Arch {
        name: "resnet18",
        block: Block::Basic,
        layers: [2, 2, 2, 2],
        pretrained: Pretrained {
            url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
            file_name: "resnet18-f37072fd.pth",
            sha256_prefix: "f37072fd",
        },
    },
    Arch {
        name: "resnet34",
        block: Block::Basic,
        layers: [3, 4, 6, 3],
        pretrained: Pretrained {
            url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
            file_name: "resnet34-b627a593.pth",
            sha256_prefix: "b627a593",
        },
    },
    Arch {
        name: "resnet50",
        block: Block::Bottleneck,
        layers: [3, 4, 6, 3],
        pretrained: Pretrained {
            url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
            file_name: "resnet50-0676ba61.pth",
            sha256_prefix: "0676ba61",
        },
    },
];

/// Looks an architecture up by name (`resnet18`, ...).
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// The names accepted by [`by_name`], for messages and `--help`.
pub fn names() -> Vec<&'static str> {
    ARCHS.iter().map(|a| a.name).collect()
}

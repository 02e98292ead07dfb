//! Config tables, scaling, resolution, validation and names.

use effnet::config::{
    make_divisible, Activation, Convention, EfficientNetConfig, MobileNetV2Config, ModelConfig,
    Padding, StageArgs, Variant,
};
use effnet::Error;

/// (variant, stem, stage output widths, stage repeats, head).
type WidthRow = (Variant, usize, [usize; 7], [usize; 7], usize);

/// Derived per-model widths of weights.md §1.3 (stem, stage outputs, repeats, head), from the reference
/// rounding rules of tensorflow/tpu.
#[test]
fn resolved_tables_match_the_reference() {
    let table: [WidthRow; 10] = [
        (
            Variant::B0,
            32,
            [16, 24, 40, 80, 112, 192, 320],
            [1, 2, 2, 3, 3, 4, 1],
            1280,
        ),
        (
            Variant::B1,
            32,
            [16, 24, 40, 80, 112, 192, 320],
            [2, 3, 3, 4, 4, 5, 2],
            1280,
        ),
        (
            Variant::B2,
            32,
            [16, 24, 48, 88, 120, 208, 352],
            [2, 3, 3, 4, 4, 5, 2],
            1408,
        ),
        (
            Variant::B3,
            40,
            [24, 32, 48, 96, 136, 232, 384],
            [2, 3, 3, 5, 5, 6, 2],
            1536,
        ),
        (
            Variant::B4,
            48,
            [24, 32, 56, 112, 160, 272, 448],
            [2, 4, 4, 6, 6, 8, 2],
            1792,
        ),
        (
            Variant::B5,
            48,
            [24, 40, 64, 128, 176, 304, 512],
            [3, 5, 5, 7, 7, 9, 3],
            2048,
        ),
        (
            Variant::B6,
            56,
            [32, 40, 72, 144, 200, 344, 576],
            [3, 6, 6, 8, 8, 11, 3],
            2304,
        ),
        (
            Variant::B7,
            64,
            [32, 48, 80, 160, 224, 384, 640],
            [4, 7, 7, 10, 10, 13, 4],
            2560,
        ),
        (
            Variant::B8,
            72,
            [32, 56, 88, 176, 248, 424, 704],
            [4, 8, 8, 11, 11, 15, 4],
            2816,
        ),
        (
            Variant::L2,
            136,
            [72, 104, 176, 344, 480, 824, 1376],
            [6, 11, 11, 16, 16, 22, 6],
            5504,
        ),
    ];
    for (v, stem, outs, reps, head) in table {
        let net = EfficientNetConfig::from_variant(v).resolve().unwrap();
        assert_eq!(net.stem_channels, stem, "{v:?} stem");
        assert_eq!(net.head_channels, head, "{v:?} head");
        assert_eq!(net.stage_depths(), reps, "{v:?} repeats");
        for (s, out) in outs.iter().enumerate() {
            let last = net.blocks.iter().rfind(|b| b.stage == s).unwrap();
            assert_eq!(last.out_channels, *out, "{v:?} stage {s}");
        }
        assert_eq!(net.blocks.len(), reps.iter().sum::<usize>());
    }
}

#[test]
fn lite_tables_match_the_reference() {
    let table: [(Variant, [usize; 7], [usize; 7]); 5] = [
        (
            Variant::Lite0,
            [16, 24, 40, 80, 112, 192, 320],
            [1, 2, 2, 3, 3, 4, 1],
        ),
        (
            Variant::Lite1,
            [16, 24, 40, 80, 112, 192, 320],
            [1, 3, 3, 4, 4, 5, 1],
        ),
        (
            Variant::Lite2,
            [16, 24, 48, 88, 120, 208, 352],
            [1, 3, 3, 4, 4, 5, 1],
        ),
        (
            Variant::Lite3,
            [24, 32, 48, 96, 136, 232, 384],
            [1, 3, 3, 5, 5, 6, 1],
        ),
        (
            Variant::Lite4,
            [24, 32, 56, 112, 160, 272, 448],
            [1, 4, 4, 6, 6, 8, 1],
        ),
    ];
    for (v, outs, reps) in table {
        let net = EfficientNetConfig::from_variant(v).resolve().unwrap();
        assert_eq!((net.stem_channels, net.head_channels), (32, 1280), "{v:?}");
        assert_eq!(net.stage_depths(), reps, "{v:?}");
        assert_eq!(net.activation, Activation::Relu6);
        assert!(net.blocks.iter().all(|b| b.se_channels.is_none()));
        // The first block reads the real (fixed) stem, not the nominal rounded 40/48 of TF's table.
        assert_eq!(net.blocks[0].in_channels, 32, "{v:?}");
        for (s, out) in outs.iter().enumerate() {
            assert_eq!(
                net.blocks
                    .iter()
                    .rfind(|b| b.stage == s)
                    .unwrap()
                    .out_channels,
                *out
            );
        }
    }
}

#[test]
fn b0_blocks_match_the_reference_listing() {
    // (in, out, expand, kernel, stride, SE reduced) per block, weights.md §1.3.
    let expected = [
        (32, 16, 1, 3, 1, 8),
        (16, 24, 6, 3, 2, 4),
        (24, 24, 6, 3, 1, 6),
        (24, 40, 6, 5, 2, 6),
        (40, 40, 6, 5, 1, 10),
        (40, 80, 6, 3, 2, 10),
        (80, 80, 6, 3, 1, 20),
        (80, 80, 6, 3, 1, 20),
        (80, 112, 6, 5, 1, 20),
        (112, 112, 6, 5, 1, 28),
        (112, 112, 6, 5, 1, 28),
        (112, 192, 6, 5, 2, 28),
        (192, 192, 6, 5, 1, 48),
        (192, 192, 6, 5, 1, 48),
        (192, 192, 6, 5, 1, 48),
        (192, 320, 6, 3, 1, 48),
    ];
    let net = EfficientNetConfig::b0().resolve().unwrap();
    assert_eq!(net.blocks.len(), expected.len());
    for (b, &(i, o, e, k, s, se)) in net.blocks.iter().zip(&expected) {
        assert_eq!(
            (
                b.in_channels,
                b.out_channels,
                b.expand_ratio,
                b.kernel,
                b.stride,
                b.se_channels
            ),
            (i, o, e, k, s, Some(se)),
            "block {}",
            b.index
        );
        assert_eq!(b.mid_channels, i * e);
        assert_eq!(b.has_skip, s == 1 && i == o);
    }
}

#[test]
fn b1_has_two_blocks_without_expansion() {
    // The case that mis-wires naive TF converters: blocks_0 and blocks_1 both lack an expand conv.
    let net = EfficientNetConfig::b1().resolve().unwrap();
    let no_expand: Vec<usize> = net
        .blocks
        .iter()
        .filter(|b| !b.has_expansion())
        .map(|b| b.index)
        .collect();
    assert_eq!(no_expand, vec![0, 1]);
    assert_eq!(net.blocks[1].name(), "blocks.0.1");
    assert!(net.blocks[1].has_skip);
}

#[test]
fn drop_path_schedule_is_linear_over_blocks() {
    let net = EfficientNetConfig::b0()
        .with_drop_path_rate(0.2)
        .resolve()
        .unwrap();
    let n = net.blocks.len() as f64;
    for b in &net.blocks {
        assert!((b.drop_path_rate - 0.2 * b.index as f64 / n).abs() < 1e-12);
    }
    assert_eq!(net.blocks[0].drop_path_rate, 0.0);
}

#[test]
fn feature_info_is_tf_reduction_endpoints() {
    let net = EfficientNetConfig::b0().resolve().unwrap();
    let info = net.feature_info();
    let got: Vec<(&str, usize, usize, usize)> = info
        .iter()
        .map(|f| (f.name.as_str(), f.block_index, f.channels, f.reduction))
        .collect();
    assert_eq!(
        got,
        vec![
            ("reduction_1", 0, 16, 2),
            ("reduction_2", 2, 24, 4),
            ("reduction_3", 4, 40, 8),
            ("reduction_4", 10, 112, 16),
            ("reduction_5", 15, 320, 32),
        ]
    );
    let m = MobileNetV2Config::new(1.0).resolve().unwrap();
    let ch: Vec<usize> = m.feature_info().iter().map(|f| f.channels).collect();
    assert_eq!(ch, vec![16, 24, 32, 96, 320]);
}

#[test]
fn mobilenetv2_widths() {
    // (multiplier, stem, head): the head stays 1280 below 1.0 and grows above.
    for (m, stem, head) in [
        (0.35, 16, 1280),
        (0.5, 16, 1280),
        (0.75, 24, 1280),
        (1.0, 32, 1280),
        (1.3, 40, 1664),
        (1.4, 48, 1792),
    ] {
        let net = MobileNetV2Config::new(m).resolve().unwrap();
        assert_eq!((net.stem_channels, net.head_channels), (stem, head), "{m}");
        assert_eq!(net.blocks.len(), 17);
        assert_eq!(net.blocks[0].expand_ratio, 1);
    }
}

#[test]
fn make_divisible_is_tf_round_filters() {
    assert_eq!(make_divisible(32.0 * 1.1, 8, None), 32);
    assert_eq!(make_divisible(40.0 * 1.1, 8, None), 48); // 44 -> 48 (round half up)
    assert_eq!(make_divisible(11.2, 8, None), 16); // 8 would be < 90% of 11.2
    assert_eq!(make_divisible(3.0, 8, None), 8);
    assert_eq!(make_divisible(3.0, 8, Some(16)), 16);
}

#[test]
fn compound_scaling_follows_the_paper() {
    let c = EfficientNetConfig::compound(0.0);
    assert_eq!(
        c.resolve().unwrap(),
        EfficientNetConfig::b0().resolve().unwrap()
    );
    let c = EfficientNetConfig::compound(2.0);
    assert!((c.width_coefficient - 1.21).abs() < 1e-12);
    assert!((c.depth_coefficient - 1.44).abs() < 1e-12);
    assert_eq!(c.resolution, 296); // 224 * 1.15^2 = 296.2
    let net = c.resolve().unwrap();
    assert!(net.blocks.len() > 16);
    // Arbitrary (width, depth, resolution), e.g. a half-size member.
    let s = EfficientNetConfig::scaled(0.5, 0.5, 128).resolve().unwrap();
    assert_eq!(s.stage_depths(), vec![1, 1, 1, 2, 2, 2, 1]);
}

#[test]
fn block_strings_round_trip() {
    let s = "r1_k3_s11_e1_i32_o16_se0.25";
    let a: StageArgs = s.parse().unwrap();
    assert_eq!(a, StageArgs::new(1, 3, 1, 1, 32, 16));
    assert_eq!(a.to_string(), s);
    for st in EfficientNetConfig::b0().stages {
        assert_eq!(st.to_string().parse::<StageArgs>().unwrap(), st);
    }
    let n: StageArgs = "k5_r2_s2_e6_i24_o40_noskip".parse().unwrap();
    assert!(!n.id_skip && n.se_ratio.is_none() && n.stride == 2);
    assert_eq!(n.to_string().parse::<StageArgs>().unwrap(), n);
    for bad in [
        "r1_k3_s12_e1_i32_o16",
        "r1_k3_e1_i32_o16",
        "r1_k3_s1_e1_i32_o16_x9",
        "r1_k4_s1_e1_i32_o16",
    ] {
        assert!(
            matches!(bad.parse::<StageArgs>(), Err(Error::InvalidConfig(_))),
            "{bad}"
        );
    }
}

#[test]
fn validate_rejects_nonsense() {
    let base = EfficientNetConfig::b0();
    let mut zero_repeats = base.clone();
    zero_repeats.stages[2].repeats = 0;
    let mut even_kernel = base.clone();
    even_kernel.stages[1].kernel = 4;
    let mut broken_chain = base.clone();
    broken_chain.stages[3].in_filters = 41;
    let cases = [
        zero_repeats,
        even_kernel,
        broken_chain,
        base.clone().with_width_coefficient(0.0),
        base.clone().with_depth_coefficient(f64::NAN),
        base.clone().with_dropout_rate(1.0),
        base.clone().with_drop_path_rate(-0.1),
        base.clone().with_bn_eps(0.0),
        base.clone().with_bn_momentum(1.5),
        base.clone().with_resolution(0),
        base.clone().with_depth_divisor(0),
        base.clone().with_stages(vec![]),
    ];
    for (i, c) in cases.iter().enumerate() {
        let e = c.resolve();
        assert!(matches!(e, Err(Error::InvalidConfig(_))), "case {i}: {e:?}");
    }
    assert!(MobileNetV2Config::new(-1.0).resolve().is_err());
}

#[test]
fn names_pick_architecture_and_numerics() {
    let tf = ModelConfig::from_name("tf_efficientnet_b3").unwrap();
    assert_eq!(
        (tf.padding(), tf.bn_eps(), tf.resolution()),
        (Padding::Same, 1e-3, 300)
    );
    let pt = ModelConfig::from_name("efficientnet_b3").unwrap();
    assert_eq!((pt.padding(), pt.bn_eps()), (Padding::Symmetric, 1e-5));
    assert_eq!(pt.resolve().unwrap().blocks, tf.resolve().unwrap().blocks);
    // Short forms are the official TF models.
    assert_eq!(ModelConfig::from_name("b3").unwrap(), tf);
    assert_eq!(ModelConfig::from_name("efficientnet-b3").unwrap(), tf);
    let lite = ModelConfig::from_name("tf_efficientnet_lite2").unwrap();
    assert_eq!(lite.resolve().unwrap().activation, Activation::Relu6);
    let m = ModelConfig::from_name("mobilenetv2_140").unwrap();
    assert_eq!(m.resolve().unwrap().head_channels, 1792);
    let m = ModelConfig::from_name("tf_mobilenetv2_100").unwrap();
    assert_eq!((m.padding(), m.bn_eps()), (Padding::Same, 1e-3));
    let d = ModelConfig::from_name("mobilenetv2_120d").unwrap();
    assert_eq!(d.resolve().unwrap().stem_channels, 32);
    for name in effnet::config::model_names() {
        ModelConfig::from_name(&name).unwrap().resolve().unwrap();
    }
    for bad in [
        "b9",
        "efficientnet_b",
        "tf_mobilenetv2_110d",
        "resnet50",
        "",
    ] {
        assert!(
            matches!(ModelConfig::from_name(bad), Err(Error::UnknownModel { .. })),
            "{bad}"
        );
    }
    let c = EfficientNetConfig::b0().with_convention(Convention::PyTorch);
    assert_eq!(
        (c.padding, c.bn_eps, c.bn_momentum),
        (Padding::Symmetric, 1e-5, 0.1)
    );
}

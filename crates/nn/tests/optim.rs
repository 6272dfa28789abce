//! Optimizer steps and LR schedules against PyTorch 2.15 (float64), produced by:
//!
//! ```python
//! import torch, math
//! torch.set_default_dtype(torch.float64)
//! def fmt(t): return "[" + ", ".join(f"{v:.10}" for v in t.flatten().tolist()) + "]"
//! p0 = torch.tensor([0.5, -1.0, 2.0])
//! grads = [torch.tensor([0.1, -0.2, 0.3]), torch.tensor([-0.4, 0.5, 0.05]), torch.tensor([0.2, 0.2, -0.6])]
//! def run(make):
//!     p = p0.clone().requires_grad_()
//!     opt = make([p])
//!     out = []
//!     for g in grads:
//!         p.grad = g.clone(); opt.step(); out.append(p.detach().clone())
//!     return out
//! cfgs = {
//!  "sgd_plain": lambda ps: torch.optim.SGD(ps, lr=0.1),
//!  "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
//!  "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5),
//!  "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
//!  "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
//!  "adam_wd": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
//!  "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
//! }
//! for k, mk in cfgs.items():
//!     print(k, [fmt(t) for t in run(mk)])
//! def sched(mk, n=12):
//!     p = torch.zeros(1, requires_grad=True); opt = torch.optim.SGD([p], lr=0.1); s = mk(opt); out = []
//!     for _ in range(n):
//!         out.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
//!     return out
//! print("step", sched(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)))
//! print("cosine", sched(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 0.001)))
//! print("linear", sched(lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, 1.0, 4)))
//! print("warm_cos", sched(lambda o: torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.LinearLR(o, 0.25, 1.0, 3), torch.optim.lr_scheduler.CosineAnnealingLR(o, 8)], [3])))
//! ```
//!
//! Each optimizer starts from θ = [0.5, −1, 2] and receives the same three gradients. The
//! first SGD step is easy to derive by hand: θ − lr·g = [0.5 − 0.01, −1 + 0.02, 2 − 0.03]; the
//! first Adam step moves every coordinate by lr·sign(g) (m̂ = g, v̂ = g², so m̂/√v̂ = ±1).
#![allow(clippy::unwrap_used)]

use convkit_autograd::Param;
use convkit_nn::{
    Adam, AdamConfig, Constant, CosineAnnealing, LinearWarmup, LrSchedule, Optimizer, Sgd,
    SgdConfig, StepLr, Then,
};
use convkit_tensor::Tensor;
use convkit_tensor::testing::{Tolerance, assert_close, assert_close_with_magnitude};

/// Parameters after each step against PyTorch's float64: `1e-6 + 1e-6·|want|`, within
/// `2e-6·max(|want|, 1)`.
const VS_PYTORCH: Tolerance = Tolerance::new(1e-6, 1e-6);

const GRADS: [[f32; 3]; 3] = [[0.1, -0.2, 0.3], [-0.4, 0.5, 0.05], [0.2, 0.2, -0.6]];

fn run(make: impl FnOnce(Vec<Param>) -> Box<dyn Optimizer>, want: [[f64; 3]; 3]) {
    let p = Param::new(Tensor::from_vec(&[3], vec![0.5, -1.0, 2.0]).unwrap());
    let mut opt = make(vec![p.clone()]);
    for (step, (g, w)) in GRADS.iter().zip(want).enumerate() {
        p.set_grad(Some(Tensor::from_vec(&[3], g.to_vec()).unwrap())).unwrap();
        opt.step().unwrap();
        let what = format!("step {} vs PyTorch", step + 1);
        assert_close(&what, p.value().as_slice(), &w, VS_PYTORCH);
    }
}

fn sgd(cfg: SgdConfig) -> impl FnOnce(Vec<Param>) -> Box<dyn Optimizer> {
    move |p| Box::new(Sgd::new(p, cfg).unwrap())
}

#[test]
fn sgd_plain() {
    run(
        sgd(SgdConfig { lr: 0.1, ..Default::default() }),
        [[0.49, -0.98, 1.97], [0.53, -1.03, 1.965], [0.51, -1.05, 2.025]],
    );
}

#[test]
fn sgd_momentum_weight_decay() {
    run(
        sgd(SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01, ..Default::default() }),
        [
            [0.4895, -0.979, 1.968],
            [0.5195605, -1.009121, 1.932232],
            [0.5260953895, -1.055220779, 1.958108568],
        ],
    );
}

#[test]
fn sgd_dampening() {
    run(
        sgd(SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.5, ..Default::default() }),
        [[0.49, -0.98, 1.97], [0.501, -0.987, 1.9405], [0.5009, -1.0033, 1.94395]],
    );
}

#[test]
fn sgd_nesterov() {
    run(
        sgd(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Default::default()
        }),
        [
            [0.48005, -0.9601, 1.9392],
            [0.546632905, -1.03626581, 1.90009552],
            [0.531950962, -1.096710224, 1.981536587],
        ],
    );
}

#[test]
fn adam() {
    run(
        |p| Box::new(Adam::new(p, AdamConfig { lr: 0.01, ..Default::default() }).unwrap()),
        [
            [0.490000001, -0.9900000005, 1.99],
            [0.4955950357, -0.994422153, 1.982166727],
            [0.4966967723, -0.9998515828, 1.985130241],
        ],
    );
}

#[test]
fn adam_l2_weight_decay() {
    let cfg = AdamConfig { lr: 0.01, betas: (0.8, 0.99), weight_decay: 0.1, ..Default::default() };
    run(
        move |p| Box::new(Adam::new(p, cfg).unwrap()),
        [
            [0.4900000007, -0.9900000003, 1.99],
            [0.4947464661, -0.9925240384, 1.980857443],
            [0.4937406387, -0.9957187814, 1.97964644],
        ],
    );
}

#[test]
fn adamw() {
    let cfg = AdamConfig { lr: 0.01, weight_decay: 0.1, ..Default::default() };
    run(
        move |p| Box::new(Adam::adamw(p, cfg).unwrap()),
        [
            [0.489500001, -0.9890000005, 1.988],
            [0.4946055357, -0.992433153, 1.978178727],
            [0.4952126668, -0.9968701497, 1.979164063],
        ],
    );
}

#[test]
fn invalid_configs_are_errors() {
    let p = || vec![Param::new(Tensor::zeros(&[1]))];
    let e = Sgd::new(p(), SgdConfig { nesterov: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("Nesterov"), "{e}");
    assert!(Sgd::new(p(), SgdConfig { lr: f32::NAN, ..Default::default() }).is_err());
    let e = Adam::new(p(), AdamConfig { betas: (1.0, 0.9), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("betas"), "{e}");
}

#[test]
fn optimizer_state_resumes_bit_exactly() {
    for adam in [false, true] {
        let make = |p: Vec<Param>| -> Box<dyn Optimizer> {
            if adam {
                Box::new(Adam::new(p, AdamConfig::default()).unwrap())
            } else {
                Box::new(
                    Sgd::new(p, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })
                        .unwrap(),
                )
            }
        };
        let start = Tensor::from_vec(&[3], vec![0.5, -1.0, 2.0]).unwrap();
        let grad = |i: usize| Tensor::from_vec(&[3], GRADS[i].to_vec()).unwrap();
        // Uninterrupted: three steps.
        let a = Param::new(start.clone());
        let mut oa = make(vec![a.clone()]);
        for i in 0..3 {
            a.set_grad(Some(grad(i))).unwrap();
            oa.step().unwrap();
        }
        // Interrupted after one step, state saved to disk and restored into a new optimizer.
        let b = Param::new(start);
        let mut ob = make(vec![b.clone()]);
        b.set_grad(Some(grad(0))).unwrap();
        ob.step().unwrap();
        let path = std::env::temp_dir()
            .join(format!("convkit-optim-{}-{adam}.safetensors", std::process::id()));
        convkit_nn::checkpoint::save_optimizer(&path, &ob.state(), &Default::default()).unwrap();
        let (state, _) = convkit_nn::checkpoint::load_optimizer(&path).unwrap();
        assert_eq!(state, ob.state());
        let mut oc = make(vec![b.clone()]);
        oc.load_state(&state).unwrap();
        for i in 1..3 {
            b.set_grad(Some(grad(i))).unwrap();
            oc.step().unwrap();
        }
        assert_eq!(a.value().as_slice(), b.value().as_slice(), "adam = {adam}");
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn sgd_on_a_large_parameter_is_the_same_for_any_thread_count() {
    // Large enough to be split over threads; the small PyTorch cases above take one pass.
    let n = 300_001;
    let cfgs = [
        SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01, ..Default::default() },
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
            ..Default::default()
        },
        SgdConfig { lr: 0.05, ..Default::default() },
    ];
    for cfg in cfgs {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let start = (0..n).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
                let p = Param::new(Tensor::from_vec(&[n], start).unwrap());
                let mut opt = Sgd::new(vec![p.clone()], cfg).unwrap();
                for step in 0..3 {
                    let g = (0..n).map(|i| ((i * 7 + step) % 13) as f32 * 0.01 - 0.06).collect();
                    p.set_grad(Some(Tensor::from_vec(&[n], g).unwrap())).unwrap();
                    opt.step().unwrap();
                }
                p.value().as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            })
        };
        let one = run(1);
        assert!(one == run(2) && one == run(3), "{cfg:?}: the update depends on the threads");
        // The same update element by element as a one-element parameter gets.
        let single = |i: usize| {
            let p = Param::new(Tensor::from_vec(&[1], vec![(i % 17) as f32 * 0.1 - 0.8]).unwrap());
            let mut opt = Sgd::new(vec![p.clone()], cfg).unwrap();
            for step in 0..3 {
                let g = ((i * 7 + step) % 13) as f32 * 0.01 - 0.06;
                p.set_grad(Some(Tensor::from_vec(&[1], vec![g]).unwrap())).unwrap();
                opt.step().unwrap();
            }
            p.value().as_slice()[0].to_bits()
        };
        for i in [0, 1, 70_000, n - 1] {
            assert_eq!(one[i], single(i), "{cfg:?}: element {i}");
        }
    }
}

/// The learning rate at each step `t` (the index) against PyTorch's: `1e-7·max(|want|, 1e-3)`,
/// as a relative tolerance against that magnitude.
fn assert_schedule(s: &dyn LrSchedule, want: &[f64]) {
    let got: Vec<f32> = (0..want.len()).map(|t| s.lr_at(t)).collect();
    let magnitude: Vec<f64> = want.iter().map(|w| w.abs().max(1e-3)).collect();
    let tol = Tolerance::new(0.0, 1e-7);
    assert_close_with_magnitude("learning rate vs PyTorch", &got, want, &magnitude, tol);
}

#[test]
fn schedules_match_pytorch() {
    assert_schedule(
        &StepLr::new(0.1, 3, 0.5).unwrap(),
        &[0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.0125],
    );
    assert_schedule(
        &CosineAnnealing::new(0.1, 10, 0.001).unwrap(),
        &[
            0.1,
            0.09757729755661011,
            0.0905463412215599,
            0.07959536998847742,
            0.0657963412215599,
            0.0505,
            0.03520365877844011,
            0.02140463001152259,
            0.010453658778440109,
            0.0034227024433899004,
            0.001,
            0.0034227024433899004,
        ],
    );
    assert_schedule(
        &LinearWarmup::new(0.1, 0.1, 4).unwrap(),
        &[0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    );
    let warm_cos = Then {
        first: LinearWarmup::new(0.1, 0.25, 3).unwrap(),
        second: CosineAnnealing::new(0.1, 8, 0.0).unwrap(),
        milestone: 3,
    };
    assert_schedule(
        &warm_cos,
        &[
            0.025,
            0.05,
            0.075,
            0.1,
            0.09619397662556434,
            0.08535533905932738,
            0.0691341716182545,
            0.05,
            0.030865828381745515,
            0.014644660940672627,
            0.0038060233744356634,
            0.0,
        ],
    );
    assert_schedule(&Constant(0.3), &[0.3, 0.3]);
    assert!(StepLr::new(0.1, 0, 0.5).is_err());
    assert!(CosineAnnealing::new(0.1, 0, 0.0).is_err());
    assert!(LinearWarmup::new(0.1, 0.0, 3).is_err());
}

#[test]
fn optimizer_and_schedule_kinds_parse_their_names_and_build() {
    use convkit_nn::{OptimizerKind, ScheduleKind};
    for k in OptimizerKind::ALL {
        assert_eq!(k.name().parse::<OptimizerKind>().unwrap(), k);
        assert_eq!(k.to_string(), k.name());
        let p = Param::new(Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap());
        let opt = k.build(vec![p], k.default_lr(), 0.9, 0.0).unwrap();
        assert_eq!(opt.lr(), k.default_lr());
    }
    assert_eq!(OptimizerKind::Sgd.default_lr(), 0.01);
    assert_eq!(OptimizerKind::Adam.default_lr(), 0.001);
    let e = "adamw".parse::<OptimizerKind>().unwrap_err().to_string();
    assert!(e.contains("unknown optimizer \"adamw\"") && e.contains("sgd or adam"), "{e}");
    for k in ScheduleKind::ALL {
        assert_eq!(k.name().parse::<ScheduleKind>().unwrap(), k);
    }
    assert!("step".parse::<ScheduleKind>().is_err());
    let cos = ScheduleKind::Cosine.schedule(0.1, 10);
    assert_eq!(cos.lr_at(0), 0.1);
    assert!(cos.lr_at(10).abs() < 1e-9);
    assert_eq!(ScheduleKind::Constant.schedule(0.1, 10).lr_at(7), 0.1);
    // A zero-length run still gives a finite schedule.
    assert!(ScheduleKind::Cosine.schedule(0.1, 0).lr_at(0).is_finite());
}

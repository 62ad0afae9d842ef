"""Every misuse a user can make that recurse catches, with the error it gets.

One row per misuse: (id, what the user did, a call that does it, the error
type, a regex of the message). ``tests/test_bad_input.py`` runs every row;
``docs/bad_input.md`` is this table in Markdown, written by

    python tests/bad_input_table.py > docs/bad_input.md

and a test checks the two agree.
"""

from __future__ import annotations

import contextlib
import io

import torch

import recurse as rc


class CommandLineError(Exception):
    """What ``python -m recurse`` printed on stderr when it exited non-zero."""


def command_line(*argv: str) -> None:
    from recurse.cli import main

    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse rejects bad choices with exit code 2
            code = exit_.code
    if code:
        raise CommandLineError(errors.getvalue().strip().splitlines()[-1])


def _params(*tensors):
    return lambda: list(tensors)


def _model_params():
    torch.manual_seed(0)
    return list(torch.nn.Linear(4, 2).parameters())


def _closure_step(value):
    opt = rc.HyperOptimizer(_model_params(), rc.SGD(0.1))
    return opt.step(lambda: value)


def _held_out_steps(held):
    """Two steps under a held-out hypergradient loss (the first hypergradient is taken at the second)."""
    params = _model_params()
    opt = rc.HyperOptimizer(params, rc.Adam(0.1, learn="lr", hyper=rc.SGD(0.01)),
                            hypergradient_loss=rc.estimators.HeldOut(lambda: held(params)))
    for _ in range(2):
        for param in params:
            param.grad = torch.ones_like(param)
        opt.step()


def _graph(steps, **options):
    params = _model_params()
    return rc.graph.build({"weight": params[:1], "bias": params[1:]}, {"a": "A", "b": "B"}, steps, **options)


ROWS = [
    ("negative-lr", "a negative learning rate", lambda: rc.SGD(-0.1), ValueError,
     r"lr must be a finite number > 0, got -0.1"),
    ("zero-lr", "a zero learning rate", lambda: rc.SGD(0.0), ValueError, r"lr must be a finite number > 0, got 0.0"),
    ("nan-lr", "a NaN learning rate", lambda: rc.Adam(float("nan")), ValueError, r"lr must be .* got nan"),
    ("beta2-at-1", "beta2 = 1", lambda: rc.Adam(1e-3, betas=(0.9, 1.0)), ValueError,
     r"beta2 must be a number in the open interval \(0, 1\), got 1.0"),
    ("negative-beta1", "a negative beta1", lambda: rc.Adam(1e-3, betas=(-0.1, 0.99)), ValueError,
     r"beta1 must be .* or exactly 0 \(off\), got -0.1"),
    ("betas-not-a-pair", "betas given as one number", lambda: rc.Adam(1e-3, betas=0.9), ValueError,
     r"betas must be a pair \(beta1, beta2\), got 0.9"),
    ("compile-not-a-bool", "compile= given as a string", lambda: rc.Adam(1e-3, compile="yes"), TypeError,
     r"rc.Adam: compile must be True or False, got 'yes'"),
    ("momentum-above-1", "momentum above 1", lambda: rc.SGD(0.1, momentum=1.5), ValueError,
     r"momentum must be .*got 1.5"),
    ("zero-eps", "eps = 0", lambda: rc.RMSprop(1e-2, eps=0.0), ValueError, r"eps must be a finite number > 0, got 0.0"),
    ("lr-as-string", "a learning rate given as a string", lambda: rc.SGD("0.1"), TypeError,
     r"lr must be a real number, got str '0.1'"),
    ("flag-not-a-bool", "a flag given a value that is not True or False", lambda: rc.Adam(1e-3, amsgrad=1),
     TypeError, r"rc.Adam: amsgrad must be True or False, got int 1"),
    ("flag-the-optimizer-lacks", "amsgrad on an optimizer that has none", lambda: rc.SGD(0.1, amsgrad=True),
     TypeError, r"rc.SGD: unknown hyperparameter\(s\) \['amsgrad'\]; .* \(and the flags \['nesterov', 'maximize'\]\)"),
    ("maximize-above-level-zero", "maximize=True on a level above the model",
     lambda: rc.HyperOptimizer([torch.zeros(3, requires_grad=True)], rc.SGD(0.1, hyper=rc.SGD(0.01, maximize=True))),
     ValueError, r"level 1 \(rc.SGD\(lr=0.01.*\)\) has maximize=True, which would make the hyperparameters it "
     r"steps worse"),
    ("maximize-tied", "maximize=True on a tied tower, which steps its own hyperparameters",
     lambda: rc.HyperOptimizer([torch.zeros(3, requires_grad=True)], rc.tower(rc.SGD(0.1, maximize=True), depth=2,
                                                                             tie=True)),
     ValueError, r"has maximize=True and steps its own hyperparameters \(tied\)"),
    ("vsgd-slow-start-below-one", "vSGD's slow-start constant below 1", lambda: rc.VSGD(slow_start=0.0),
     ValueError, r"rc.VSGD: slow_start must be a number >= 1 \(it overestimates the variances\), got 0.0"),
    ("vsgd-normalized", "vSGD with a gradient normaliser", lambda: rc.VSGD(normalize="rms"), ValueError,
     r"rc.VSGD: normalize= would divide the gradient at p but not the one at p \+ gbar"),
    ("vsgd-initial-samples", "vSGD's initial sample count not a positive integer",
     lambda: rc.VSGD(initial_samples=0), ValueError, r"rc.VSGD: initial_samples must be an integer >= 1, got 0"),
    ("nesterov-without-momentum", "Nesterov without momentum", lambda: rc.SGD(0.1, nesterov=True), ValueError,
     r"nesterov=True needs momentum > 0 and dampening = 0, got momentum=0.0"),
    ("hyper-not-an-optimizer", "hyper= given a torch.optim class", lambda: rc.SGD(0.1, hyper=torch.optim.SGD),
     TypeError, r"hyper= must be an rc.Optimizer .* got the class torch.optim.sgd.SGD"),
    ("learn-an-off-knob", "learning a knob that is 0 (off)", lambda: rc.SGD(0.1, learn=("momentum",)), ValueError,
     r"cannot learn 'momentum': it is 0"),
    ("learn-unknown-name", "learn= naming a knob the optimizer lacks", lambda: rc.SGD(0.1, learn=("gamma",)),
     ValueError, r"learn= names unknown hyperparameter 'gamma'"),
    ("parametrization-unknown-name", "parametrization= naming a knob the optimizer lacks",
     lambda: rc.SGD(0.1, parametrization={"gamma": "identity"}), ValueError,
     r"parametrization= names unknown hyperparameter 'gamma'"),
    ("parametrization-unknown-kind", "a parametrization that is neither 'constrained' nor 'identity'",
     lambda: rc.SGD(0.1, parametrization={"lr": "log"}), ValueError,
     r"parametrization of 'lr' must be 'constrained' or 'identity', got 'log'"),
    ("unknown-normalizer", "an unknown normaliser", lambda: rc.SGD(0.1, normalize="batch"), ValueError,
     r"normalize must be None, 'rms'"),
    ("negative-accumulator", "a negative initial accumulator", lambda: rc.Adagrad(0.1, initial_accumulator_value=-1.0),
     ValueError, r"initial_accumulator_value must be >= 0"),
    ("rprop-learned-lr", "learning Rprop's lr (only its first step size)",
     lambda: rc.Rprop(learn="lr", hyper=rc.SGD(0.1)), ValueError, r"rc.Rprop: its lr is only the first step size"),
    ("rprop-hyper", "a level above Rprop", lambda: rc.Rprop(hyper=rc.SGD(0.1)), ValueError,
     r"rc.Rprop: nothing above it can learn its lr"),
    ("rprop-etas", "Rprop etas that do not shrink and grow", lambda: rc.Rprop(etas=(1.2, 0.5)), ValueError,
     r"etas must satisfy 0 < eta_minus < 1 < eta_plus, got \(1.2, 0.5\)"),
    ("rprop-step-sizes", "Rprop step sizes out of order", lambda: rc.Rprop(step_sizes=(1.0, 0.1)), ValueError,
     r"step_sizes must satisfy 0 <= step_min <= step_max, got \(1.0, 0.1\)"),
    ("negative-depth", "a tower of depth < 0", lambda: rc.tower(rc.SGD(0.1), depth=-1), ValueError,
     r"depth must be an integer >= 0, got -1"),
    ("fractional-depth", "a fractional depth", lambda: rc.tower(rc.SGD(0.1), depth=2.5), ValueError,
     r"depth must be an integer >= 0, got 2.5"),
    ("stack-non-optimizer", "a non-optimizer in rc.stack", lambda: rc.stack(rc.SGD(0.1), "sgd"), TypeError,
     r"argument 1 must be an rc.Optimizer, got builtins.str"),
    ("empty-params", "an empty parameter list", lambda: rc.HyperOptimizer([], rc.SGD(0.1)), ValueError,
     r"got an empty parameter list"),
    ("torch-optimizer", "a torch.optim class as the tower",
     lambda: rc.HyperOptimizer(_model_params(), torch.optim.SGD), TypeError,
     r"must be an rc.Optimizer \(for example rc.Adam\(1e-3\)\), got the class torch.optim.sgd.SGD"),
    ("mixed-devices", "parameters on two devices",
     lambda: rc.HyperOptimizer([torch.zeros(3, requires_grad=True), torch.zeros(3, device="meta", requires_grad=True)],
                               rc.SGD(0.1)),
     ValueError, r"parameter 1 is on meta but parameter 0 is on cpu; all parameters must share one device"),
    ("value-beyond-one-dtype", "a value one of the parameters' dtypes cannot hold (float16 beside float32)",
     lambda: rc.HyperOptimizer([torch.zeros(3, requires_grad=True),
                                torch.zeros(3, dtype=torch.float16, requires_grad=True)], rc.SGD(1e5)),
     ValueError, r"rc.SGD: lr = 100000.0 is beyond the largest torch.float16 \(65504\)"),
    ("integer-param", "an integer parameter", lambda: rc.HyperOptimizer([torch.zeros(3, dtype=torch.long)], rc.SGD(0.1)),
     TypeError, r"parameter 0 has dtype torch.int64; expected floating point"),
    ("single-tensor", "one tensor instead of a list", lambda: rc.HyperOptimizer(torch.zeros(3, requires_grad=True),
                                                                                  rc.SGD(0.1)),
     TypeError, r"params must be an iterable of tensors, got a single tensor"),
    ("repeated-param", "the same parameter twice",
     lambda: rc.HyperOptimizer(_model_params()[:1] * 2, rc.SGD(0.1)), ValueError,
     r"rc.HyperOptimizer: parameter 1 is parameter 0 again; pass each parameter once"),
    ("group-bad-lr", "a negative lr as a param group's own option",
     lambda: rc.HyperOptimizer([{"params": [torch.zeros(3, requires_grad=True)]},
                                {"params": [torch.zeros(3, requires_grad=True)], "lr": -0.1}], rc.SGD(0.1)),
     ValueError, r"rc.HyperOptimizer: param group 1: lr must be a finite number >= 0, got -0.1"),
    ("group-torch-option", "a torch.optim option that is not a knob in a param group",
     lambda: rc.HyperOptimizer([{"params": [torch.zeros(3, requires_grad=True)], "nesterov": True}],
                               rc.SGD(0.1, momentum=0.9)),
     ValueError, r"a param group sets \['nesterov'\], which torch.optim takes per group but an rc optimizer takes once"),
    ("groups-under-a-tied-tower", "several param groups under a tower that steps itself",
     lambda: rc.HyperOptimizer([{"params": [torch.zeros(3, requires_grad=True)]},
                                {"params": [torch.zeros(3, requires_grad=True)]}], rc.tower(rc.SGD(0.1), 2, tie=True)),
     ValueError, r"2 param groups, but a tied tower \(tie=True\) steps itself as one group"),
    ("add-param-group", "add_param_group after construction (progressive unfreezing)",
     lambda: rc.HyperOptimizer(_model_params(), rc.SGD(0.1)).add_param_group(
         {"params": [torch.zeros(3, requires_grad=True)]}),
     NotImplementedError, r"parameters cannot be added after construction \(add_param_group\); build a new "
     r"HyperOptimizer over all of them"),
    ("hyper-with-nothing-to-learn", "hyper= on an optimizer that learns nothing",
     lambda: rc.HyperOptimizer(_model_params(), rc.SGD(0.1, learn=(), hyper=rc.SGD(0.1))), ValueError,
     r"has hyper= but nothing to learn"),
    ("learn-with-no-level-above", "learn= on an optimizer that no level above learns (it would train at its "
     "starting values, silently)",
     lambda: rc.HyperOptimizer(_model_params(), rc.Adam(1e-3, learn="lr")), ValueError,
     r"level 0 \(rc.Adam\(lr=0.001.*\)\) marks \['lr'\] as learned \(learn=\), but no optimizer above learns them"),
    ("graph-edge-that-cannot-run", "a graph node stepping the hyperparameters of two optimizers",
     lambda: rc.graph.build({"a": [torch.zeros(2, requires_grad=True)], "b": [torch.zeros(2, requires_grad=True)]},
                            {"x": rc.SGD(0.1), "y": rc.SGD(0.1), "meta": rc.SGD(0.01)},
                            {"x": "a", "y": "b", "meta": ["x.hyper", "y.hyper"]}), rc.graph.GraphError,
     r"optimizer 'meta' steps \['x.hyper', 'y.hyper'\]: an optimizer steps model groups or the hyperparameters of "
     r"one optimizer, not both or several"),
    ("value-beyond-dtype", "a learning rate the parameters' dtype cannot hold",
     lambda: rc.HyperOptimizer(_model_params(), rc.SGD(3.5e38)), ValueError,
     r"rc.SGD: lr = 3.5e\+38 is beyond the largest torch.float32 \(3.40282e\+38\), the dtype of the parameters it "
     r"steps"),
    ("value-rounds-to-zero", "Adam's default eps on float16 parameters (it rounds to 0)",
     lambda: rc.HyperOptimizer([torch.zeros(2, dtype=torch.float16, requires_grad=True)], rc.Adam(1e-3)), ValueError,
     r"rc.Adam: eps = 1e-08 rounds to 0 in torch.float16, the dtype of the parameters it steps \(its smallest "
     r"positive number is 5.96e-08\)"),
    ("per-group-value-rounds-to-zero", "a group's value that rounds to 0 in the parameters' dtype, in an unroll",
     lambda: rc.unroll(lambda p, k: (p[0] ** 2 + p[1] ** 2).sum(),
                       [torch.ones(2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)],
                       rc.PerGroup({"a": (rc.SGD(0.1), [0]), "b": (rc.Adam(1e-3), [1])}), steps=2), ValueError,
     r"rc.Adam: eps = 1e-08 rounds to 0 in torch.float16"),
    ("unroll-value-beyond-dtype", "an unroll whose learning rate the parameters' dtype cannot hold",
     lambda: rc.unroll(lambda p, k: (p[0] ** 2).sum(), [torch.ones(2)], rc.SGD(3.5e38), steps=2), ValueError,
     r"rc.SGD: lr = 3.5e\+38 is beyond the largest torch.float32"),
    ("bad-guard", "an unknown guard mode", lambda: rc.HyperOptimizer(_model_params(), rc.SGD(0.1), guard="ignore"),
     ValueError, r"guard must be one of \('skip', 'raise', 'off'\), got 'ignore'"),
    ("first-step-limit-zero", "a first step limit of 0",
     lambda: rc.HyperOptimizer(_model_params(), first_step_limit=0.0), ValueError,
     r"first_step_limit must be a number > 0 or None, got 0.0"),
    ("first-step-limit-nan", "a first step limit that is not a finite number",
     lambda: rc.HyperOptimizer(_model_params(), first_step_limit=float("nan")), ValueError,
     r"first_step_limit must be a finite number, got nan"),
    ("closure-returns-none", "a closure that returns None", lambda: _closure_step(None), ValueError,
     r"the closure returned None; it must return the loss"),
    ("closure-non-scalar", "a closure whose loss is not a scalar", lambda: _closure_step(torch.ones(3)), ValueError,
     r"the closure must return the scalar loss, got shape \(3,\)"),
    ("held-out-non-scalar", "a held-out closure that returns a non-scalar",
     lambda: _held_out_steps(lambda params: params[0] * 2), ValueError,
     r"HeldOut: the closure must return the scalar held-out loss, got shape \(2, 4\)"),
    ("held-out-no-grad", "a held-out closure whose loss needs no grad",
     lambda: _held_out_steps(lambda params: torch.tensor(1.0)), ValueError,
     r"HeldOut: the held-out loss needs no grad, so it does not depend on the parameters"),
    ("held-out-every", "a held-out cadence that is not a positive integer",
     lambda: rc.estimators.HeldOut(lambda: torch.tensor(1.0), every=0), ValueError,
     r"every must be an integer >= 1, got 0"),
    ("hypergradient-loss-type", "a hypergradient loss that is not one",
     lambda: rc.HyperOptimizer(_model_params(), hypergradient_loss=lambda: 0.0), TypeError,
     r"hypergradient_loss must be rc.estimators.TrainingLoss\(\) or rc.estimators.HeldOut\(closure\)"),
    ("unroll-non-scalar", "an unroll objective that is not a scalar",
     lambda: rc.unroll(lambda p, k: p[0] * 2, [torch.zeros(2)], rc.SGD(0.1), steps=2), ValueError,
     r"the objective must return a scalar tensor, got \(2,\) at inner step 0"),
    ("unroll-zero-steps", "an unroll of 0 steps",
     lambda: rc.unroll(lambda p, k: p[0].sum(), [torch.zeros(2)], rc.SGD(0.1), steps=0), ValueError,
     r"steps must be an integer >= 1, got 0"),
    ("meta-trainer-steps", "unroll_steps not matching the levels",
     lambda: rc.MetaTrainer([torch.zeros(2)], lambda p, k: p[0].sum(), [rc.SGD(0.1), rc.SGD(0.1), rc.SGD(0.1)],
                            unroll_steps=[3]), ValueError, r"unroll_steps needs one count per learned level \(2\), got \[3\]"),
    ("lstm-hidden-size", "an LSTM optimizer with no hidden units", lambda: rc.LSTMOptimizer(hidden_size=0),
     ValueError, r"hidden_size must be an integer >= 1, got 0"),
    ("lstm-preprocess", "an unknown LSTM preprocessing", lambda: rc.LSTMOptimizer(preprocess="log"), ValueError,
     r"preprocess must be one of \('log_sign', 'scale'\), got 'log'"),
    ("lstm-output-scale", "a negative LSTM output scale", lambda: rc.LSTMOptimizer(output_scale=-0.1), ValueError,
     r"output_scale must be > 0, got -0.1"),
    ("lstm-learn", "learn= naming something an LSTM optimizer lacks", lambda: rc.LSTMOptimizer(learn="lr"),
     ValueError, r"learn= must be None, 'weights' or \(\) \(frozen weights\), got 'lr'"),
    ("per-group-overlap", "a parameter in two groups",
     lambda: rc.PerGroup({"a": (rc.SGD(0.1), [0, 1]), "b": (rc.SGD(0.1), [1])}), ValueError,
     r"parameter 1 is in groups 'a' and 'b'"),
    ("per-group-normalize", "normalize= on one group's optimizer (a group cannot apply it)",
     lambda: rc.PerGroup({"a": (rc.SGD(0.1, normalize="rms"), [0]), "b": (rc.SGD(0.1), [1])}), ValueError,
     r"group 'a''s optimizer rc.SGD\(lr=0.1, .*\) has normalize= of its own, which a group cannot apply; give "
     r"normalize= to the PerGroup instead"),
    ("per-group-gap", "groups that skip a parameter", lambda: rc.PerGroup({"a": (rc.SGD(0.1), [0, 2])}), ValueError,
     r"must cover 0 .. n-1 exactly once, got \[0, 2\]"),
    ("per-group-tensors", "parameters instead of their positions in a group",
     lambda: rc.PerGroup({"a": (rc.SGD(0.1), [torch.zeros(2)])}), TypeError,
     r"group 'a'.s indices must be integers \(positions in the list of parameters the tower steps\), got Tensor"),
    ("param-group-unknown-knob", "reading a knob level 0 does not have from a param group",
     lambda: rc.HyperOptimizer(_model_params(), rc.LSTMOptimizer()).param_groups[0]["lr"], KeyError,
     r"'lr': not in this param group, and level 0 \(rc.LSTMOptimizer.*\) has no hyperparameter by that name"),
    ("param-group-bad-lr", "a scheduler writing a negative learning rate",
     lambda: rc.HyperOptimizer(_model_params(), rc.SGD(0.1)).param_groups[0].__setitem__("lr", -0.1), ValueError,
     r"rc.SGD: lr must be a finite number >= 0, got -0.1"),
    ("per-group-own-hyper", "a group's optimizer with hyper= of its own",
     lambda: rc.PerGroup({"a": (rc.SGD(0.1, hyper=rc.SGD(0.1)), [0])}), ValueError,
     r"group 'a'.s optimizer .* has hyper= of its own; give hyper= to the PerGroup instead"),
    ("negative-penalty", "a negative L2 penalty", lambda: rc.transforms.L2Penalty(-1.0), ValueError,
     r"L2Penalty: weight must be a finite number >= 0, got -1.0"),
    ("meta-trainer-backoff", "a meta-trainer backoff of 0",
     lambda: rc.MetaTrainer([torch.zeros(2)], lambda p, k: p[0].sum(), [rc.SGD(0.1), rc.Adam(0.1)],
                            unroll_steps=[3], backoff=0.0), ValueError, r"backoff must be in \(0, 1\], got 0.0"),
    ("negative-update-penalty", "a negative update-size penalty",
     lambda: rc.unroll(lambda p, k: p[0].sum(), [torch.zeros(2)], rc.SGD(0.1), steps=2, update_penalty=-1.0),
     ValueError, r"update_penalty must be a finite number >= 0, got -1.0"),
    ("graph-two-steppers", "a group stepped by two optimizers", lambda: _graph({"a": ["weight", "bias"], "b": "bias"}),
     rc.graph.GraphError, r"group 'bias' is stepped by 2 optimizers \['a', 'b'\]"),
    ("graph-unreached", "a trainable group stepped by none", lambda: _graph({"a": "weight"}), rc.graph.GraphError,
     r"trainable group 'bias' is stepped by no optimizer"),
    ("graph-untied-cycle", "a cycle that is not a declared tie",
     lambda: _graph({"a": ["weight", "b.hyper"], "b": ["bias", "a.hyper"]}), rc.graph.GraphError,
     r"cycle .* is not a declared tie"),
    ("graph-shared-param", "one parameter in two groups",
     lambda: (lambda weight: rc.graph.build({"weight": weight, "again": weight}, {"a": "A"}, {"a": "weight"}))(
         _model_params()[:1]),
     rc.graph.GraphError, r"a tensor of shape \(2, 4\) is in groups 'weight' and 'again'; each parameter belongs to "
     r"one group"),
    ("graph-add-param-group", "add_param_group on a GraphOptimizer (the group would belong to no node)",
     lambda: rc.graph.GraphOptimizer(rc.graph.build({"weight": _model_params()}, {"a": rc.SGD(0.1)}, {"a": "weight"}))
     .add_param_group({"params": [torch.zeros(3, requires_grad=True)]}),
     NotImplementedError, r"rc.graph.GraphOptimizer: parameters cannot be added after construction"),
    ("rollback-every", "rc.Rollback taking a snapshot every 0 steps",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1), every=0),
     ValueError, r"rc.Rollback: every must be an integer >= 1, got 0"),
    ("rollback-threshold", "a divergence threshold of 1 (every loss above the reference would diverge)",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1),
                         threshold=1.0),
     ValueError, r"rc.Rollback: threshold must be a finite number > 1, got 1.0"),
    ("rollback-shrink", "a shrink factor of 1 (the lr would not change)",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1),
                         shrink=1.0),
     ValueError, r"rc.Rollback: shrink must be a number in \(0, 1\), got 1.0"),
    ("rollback-floor", "a negative loss floor",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1),
                         floor=-1.0),
     ValueError, r"rc.Rollback: floor must be a finite number >= 0, got -1.0"),
    ("rollback-optimizer", "rc.Rollback given an rc.Optimizer rule instead of the optimizer that steps the model",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), rc.SGD(0.1)), TypeError,
     r"rc.Rollback: optimizer must have param_groups, state_dict and load_state_dict"),
    ("rollback-loss-shape", "rc.Rollback.observe given a loss per example",
     lambda: rc.Rollback(torch.nn.Linear(2, 1), torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1))
     .observe(torch.ones(4)),
     ValueError, r"rc.Rollback.observe: the loss must be a scalar, got shape \(4,\)"),
    ("storage-url", "an Optuna storage URL that cannot be opened",
     lambda: rc.baselines.open_storage("nosuchdriver://x"), ValueError,
     r"cannot open Optuna storage 'nosuchdriver://x'"),
    ("unknown-task", "an unknown task name", lambda: rc.problems.make_task("cifar"), ValueError,
     r"unknown task 'cifar'; expected one of \['char_lm', 'digits', 'digits_cnn'"),
    ("cli-unknown-task", "an unknown task name on the command line",
     lambda: command_line("compare", "--task", "cifar"), CommandLineError, r"invalid choice: 'cifar'"),
    ("cli-unknown-method", "an unknown method name on the command line",
     lambda: command_line("compare", "--methods", "bayes", "--quiet"), CommandLineError,
     r"recurse: error: unknown method 'bayes'"),
    ("cli-bad-device", "an unknown device on the command line", lambda: command_line("demo", "--device", "nonsense"),
     CommandLineError, r"recurse: error: unknown --device 'nonsense'"),
    ("study-bad-device", "an unknown device for a study",
     lambda: command_line("run", "precision", "--quick", "--device", "nonsense", "--out", "/tmp/recurse-bad-device"),
     CommandLineError, r"recurse: error: unknown --device 'nonsense'"),
]


def markdown() -> str:
    lines = ["# Bad input and the errors it gets", "",
             "Every row is a test (`tests/test_bad_input.py` runs `tests/bad_input_table.py`). Errors name the "
             "bad value and what was expected; nothing is updated before the check passes.", "",
             "| id | misuse | error | message (regex) |", "|---|---|---|---|"]
    for row_id, misuse, _, error, message in ROWS:
        lines.append(f"| {row_id} | {misuse} | `{error.__name__}` | `{message.replace('|', '&#124;')}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

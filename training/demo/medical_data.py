"""Medical domain: clinical calculations with worked steps, and short factual questions from a small table.

Calculations: weight-based doses (mg/kg, mg/kg/day divided), liquid dose volumes, infusion rates (mL/h, including
mcg/kg/min drips), BMI, and conversions (lb/kg with 1 kg = 2.2 lb, degrees F/C, mcg/mg). Arithmetic is done in
`Decimal` and results that are not whole are rounded half-up to one decimal, which each prompt says.
The completion ends with "Answer: <value> <unit>" and the row's "answer" is "<value> <unit>".
The facts (normal ranges, drug classes, antidotes) are standard textbook values, for a demo, not for clinical use.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

_ONE_DECIMAL = Decimal("0.1")


def fmt(x: Decimal | int) -> str:
    """A number without trailing zeros: 600, 12.5, 0.25."""
    d = Decimal(x)
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def _round1(x: Decimal) -> Decimal:
    return x.quantize(_ONE_DECIMAL, rounding=ROUND_HALF_UP)


DRUGS_MG_PER_KG: tuple[str, ...] = ("amoxicillin", "cefazolin", "acetaminophen", "ibuprofen", "gentamicin", "vancomycin")
LIQUIDS: tuple[str, ...] = ("amoxicillin suspension", "acetaminophen syrup", "cephalexin suspension", "ibuprofen syrup")
FLUIDS: tuple[str, ...] = ("normal saline", "lactated Ringer's", "dextrose 5% in water", "half normal saline")
DRIPS: tuple[str, ...] = ("dopamine", "dobutamine", "norepinephrine", "nitroglycerin")


def _dose_mg_per_kg(rng: random.Random) -> tuple[str, list[str], str]:
    who, w, d = rng.choice(("child", "patient")), rng.randint(8, 90), rng.choice((2, 5, 10, 15, 20, 25, 30))
    drug = rng.choice(DRUGS_MG_PER_KG)
    prompt = f"A {who} weighs {w} kg. The order is {drug} {d} mg/kg. How many mg should be given?"
    return prompt, [f"{w} kg * {d} mg/kg = {w * d} mg"], f"{w * d} mg"


def _divided_daily(rng: random.Random) -> tuple[str, list[str], str]:
    hours = rng.choice((6, 8, 12))
    doses = 24 // hours
    while True:
        w, d = rng.randint(8, 80), rng.choice((20, 30, 40, 45, 50, 60, 90))
        if (w * d) % doses == 0:
            break
    drug = rng.choice(DRUGS_MG_PER_KG)
    prompt = (
        f"A patient weighs {w} kg. {drug.capitalize()} is ordered at {d} mg/kg/day divided every {hours} hours. "
        f"How many mg per dose?"
    )
    steps = [f"{w} kg * {d} mg/kg/day = {w * d} mg/day", f"24 h / {hours} h = {doses} doses",
             f"{w * d} mg / {doses} = {w * d // doses} mg"]  # fmt: skip
    return prompt, steps, f"{w * d // doses} mg"


def _liquid_volume(rng: random.Random) -> tuple[str, list[str], str]:
    conc, vol = rng.choice(((125, 5), (250, 5), (100, 5), (160, 5), (40, 1), (200, 5), (50, 1)))
    dose = Decimal(conc) * rng.choice((1, 2, 3, 4, 6, 8)) / 4  # a quarter-multiple of the stock: tidy volumes
    if dose != dose.to_integral_value():
        dose = dose.to_integral_value(rounding=ROUND_HALF_UP)
    ml = _round1(dose * vol / conc)
    drug = rng.choice(LIQUIDS)
    prompt = (
        f"Give {fmt(dose)} mg of {drug}. The stock is {conc} mg per {vol} mL. "
        f"How many mL should be given? Round to one decimal."
    )
    return prompt, [f"{fmt(dose)} mg / {conc} mg * {vol} mL = {fmt(ml)} mL"], f"{fmt(ml)} mL"


def _infusion_rate(rng: random.Random) -> tuple[str, list[str], str]:
    hours = rng.choice((2, 4, 6, 8, 10, 12, 24))
    rate = rng.randint(2, 50) * 5
    volume = rate * hours
    prompt = f"Infuse {volume} mL of {rng.choice(FLUIDS)} over {hours} hours. What is the rate in mL/h?"
    return prompt, [f"{volume} mL / {hours} h = {rate} mL/h"], f"{rate} mL/h"


def _drip_rate(rng: random.Random) -> tuple[str, list[str], str]:
    dose, w, conc = rng.randint(2, 15), rng.randint(45, 110), rng.choice((400, 800, 1600, 3200))
    drug = rng.choice(DRIPS)
    per_min = dose * w
    per_hour = per_min * 60
    rate = _round1(Decimal(per_hour) / conc)
    prompt = (
        f"{drug.capitalize()} is ordered at {dose} mcg/kg/min for a {w} kg patient. The bag contains {conc} mcg/mL. "
        f"What is the rate in mL/h? Round to one decimal."
    )
    steps = [f"{dose} mcg/kg/min * {w} kg = {per_min} mcg/min", f"{per_min} mcg/min * 60 = {per_hour} mcg/h",
             f"{per_hour} mcg/h / {conc} mcg/mL = {fmt(rate)} mL/h"]  # fmt: skip
    return prompt, steps, f"{fmt(rate)} mL/h"


def _bmi(rng: random.Random) -> tuple[str, list[str], str]:
    w, h = rng.randint(40, 130), rng.randint(145, 200)
    m = Decimal(h) / 100
    m2 = m * m
    bmi = _round1(Decimal(w) / m2)
    prompt = f"An adult weighs {w} kg and is {h} cm tall. What is the BMI? Round to one decimal."
    steps = [f"{h} cm = {fmt(m)} m", f"{fmt(m)} * {fmt(m)} = {fmt(m2)}", f"{w} / {fmt(m2)} = {fmt(bmi)} kg/m2"]
    return prompt, steps, f"{fmt(bmi)} kg/m2"


def _lb_to_kg(rng: random.Random) -> tuple[str, list[str], str]:
    lb = rng.randint(10, 300)
    kg = _round1(Decimal(lb) / Decimal("2.2"))
    prompt = f"Convert {lb} lb to kg (1 kg = 2.2 lb). Round to one decimal."
    return prompt, [f"{lb} lb / 2.2 = {fmt(kg)} kg"], f"{fmt(kg)} kg"


def _kg_to_lb(rng: random.Random) -> tuple[str, list[str], str]:
    kg = Decimal(rng.randint(30, 1500)) / 10
    lb = _round1(kg * Decimal("2.2"))
    prompt = f"Convert {fmt(kg)} kg to lb (1 kg = 2.2 lb). Round to one decimal."
    return prompt, [f"{fmt(kg)} kg * 2.2 = {fmt(lb)} lb"], f"{fmt(lb)} lb"


def _f_to_c(rng: random.Random) -> tuple[str, list[str], str]:
    f = Decimal(rng.randint(950, 1060)) / 10
    diff = f - 32
    c = _round1(diff * 5 / 9)
    prompt = f"A temperature is {fmt(f)} F. What is it in C? Round to one decimal."
    return prompt, [f"{fmt(f)} - 32 = {fmt(diff)}", f"{fmt(diff)} * 5 / 9 = {fmt(c)} C"], f"{fmt(c)} C"


def _c_to_f(rng: random.Random) -> tuple[str, list[str], str]:
    c = Decimal(rng.randint(350, 420)) / 10
    scaled = c * 9 / 5
    f = _round1(scaled + 32)
    prompt = f"A temperature is {fmt(c)} C. What is it in F? Round to one decimal."
    return prompt, [f"{fmt(c)} * 9 / 5 = {fmt(scaled)}", f"{fmt(scaled)} + 32 = {fmt(f)} F"], f"{fmt(f)} F"


def _mcg_mg(rng: random.Random) -> tuple[str, list[str], str]:
    if rng.random() < 0.5:
        mcg = rng.randint(1, 400) * 25
        mg = Decimal(mcg) / 1000
        return f"Convert {mcg} mcg to mg.", [f"{mcg} mcg / 1000 = {fmt(mg)} mg"], f"{fmt(mg)} mg"
    mg = Decimal(rng.randint(1, 200)) / 4
    mcg = mg * 1000
    return f"Convert {fmt(mg)} mg to mcg.", [f"{fmt(mg)} mg * 1000 = {fmt(mcg)} mcg"], f"{fmt(mcg)} mcg"


CALCULATIONS = (_dose_mg_per_kg, _divided_daily, _liquid_volume, _infusion_rate, _drip_rate, _bmi, _lb_to_kg,
                _kg_to_lb, _f_to_c, _c_to_f, _mcg_mg)  # fmt: skip

# (what, range): "What is the normal range for <what>?"
NORMAL_RANGES: tuple[tuple[str, str], ...] = (
    ("adult resting heart rate", "60 to 100 beats per minute"),
    ("adult respiratory rate", "12 to 20 breaths per minute"),
    ("oxygen saturation", "95 to 100 percent"),
    ("fasting blood glucose", "70 to 99 mg/dL"),
    ("serum sodium", "135 to 145 mmol/L"),
    ("serum potassium", "3.5 to 5.0 mmol/L"),
    ("serum chloride", "98 to 106 mmol/L"),
    ("serum calcium", "8.5 to 10.5 mg/dL"),
    ("arterial blood pH", "7.35 to 7.45"),
    ("arterial PaCO2", "35 to 45 mmHg"),
    ("serum bicarbonate", "22 to 28 mmol/L"),
    ("platelet count", "150,000 to 450,000 per microliter"),
    ("white blood cell count", "4,000 to 11,000 per microliter"),
    ("hemoglobin in adult men", "13.5 to 17.5 g/dL"),
    ("hemoglobin in adult women", "12.0 to 15.5 g/dL"),
    ("adult body mass index", "18.5 to 24.9 kg/m2"),
    ("INR without anticoagulation", "0.8 to 1.2"),
    ("serum creatinine in adults", "0.6 to 1.2 mg/dL"),
)

DRUG_CLASSES: tuple[tuple[str, str], ...] = (
    ("metoprolol", "beta blocker"), ("atenolol", "beta blocker"), ("propranolol", "beta blocker"),
    ("lisinopril", "ACE inhibitor"), ("enalapril", "ACE inhibitor"), ("ramipril", "ACE inhibitor"),
    ("losartan", "angiotensin receptor blocker"), ("valsartan", "angiotensin receptor blocker"),
    ("amlodipine", "calcium channel blocker"), ("diltiazem", "calcium channel blocker"),
    ("atorvastatin", "statin"), ("simvastatin", "statin"), ("rosuvastatin", "statin"),
    ("metformin", "biguanide"), ("glipizide", "sulfonylurea"), ("omeprazole", "proton pump inhibitor"),
    ("pantoprazole", "proton pump inhibitor"), ("famotidine", "H2 receptor antagonist"),
    ("furosemide", "loop diuretic"), ("hydrochlorothiazide", "thiazide diuretic"),
    ("spironolactone", "potassium-sparing diuretic"), ("warfarin", "vitamin K antagonist"),
    ("apixaban", "factor Xa inhibitor"), ("clopidogrel", "P2Y12 inhibitor"), ("ibuprofen", "NSAID"),
    ("naproxen", "NSAID"), ("morphine", "opioid"), ("oxycodone", "opioid"), ("sertraline", "SSRI"),
    ("fluoxetine", "SSRI"), ("venlafaxine", "SNRI"), ("amitriptyline", "tricyclic antidepressant"),
    ("lorazepam", "benzodiazepine"), ("diazepam", "benzodiazepine"), ("amoxicillin", "penicillin"),
    ("cephalexin", "cephalosporin"), ("azithromycin", "macrolide"), ("ciprofloxacin", "fluoroquinolone"),
    ("doxycycline", "tetracycline"), ("prednisone", "corticosteroid"), ("albuterol", "beta-2 agonist"),
    ("ondansetron", "5-HT3 antagonist"), ("loratadine", "antihistamine"), ("haloperidol", "antipsychotic"),
)  # fmt: skip

ANTIDOTES: tuple[tuple[str, str], ...] = (
    ("opioid overdose", "naloxone"), ("benzodiazepine overdose", "flumazenil"),
    ("acetaminophen overdose", "acetylcysteine"), ("heparin overdose", "protamine sulfate"),
    ("warfarin overdose", "vitamin K"), ("digoxin toxicity", "digoxin immune fab"),
    ("methanol poisoning", "fomepizole"), ("organophosphate poisoning", "atropine"),
    ("iron overdose", "deferoxamine"), ("insulin overdose", "dextrose"),
)  # fmt: skip


def _fact(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.random()
    if kind < 0.35:
        what, value = rng.choice(NORMAL_RANGES)
        q = rng.choice(("What is the normal range for {w}?", "Give the normal range of {w}.",
                        "What is a normal {w}?")).format(w=what)  # fmt: skip
        return q, f"The normal range for {what} is {value}.", value
    if kind < 0.8:
        drug, cls = rng.choice(DRUG_CLASSES)
        q = rng.choice(("What drug class does {d} belong to?", "Which drug class is {d} in?",
                        "Name the drug class of {d}.")).format(d=drug)  # fmt: skip
        return q, f"{drug.capitalize()} belongs to the {cls} class.", cls
    what, antidote = rng.choice(ANTIDOTES)
    q = rng.choice(("What is the antidote for {w}?", "Which drug reverses {w}?")).format(w=what)
    return q, f"The antidote for {what} is {antidote}.", antidote


def sample(rng: random.Random) -> dict:
    """One medical example: {"prompt", "completion", "answer"} (the answer is dropped outside test splits)."""
    if rng.random() < 0.25:
        prompt, line, answer = _fact(rng)
        return {"prompt": prompt + "\n", "completion": f"{line}\nAnswer: {answer}", "answer": answer}
    prompt, steps, answer = rng.choice(CALCULATIONS)(rng)
    return {"prompt": prompt + "\n", "completion": "\n".join([*steps, f"Answer: {answer}"]), "answer": answer}

"""Medical domain: clinical calculations with worked steps, and short factual questions from a small table.

Calculations: weight-based doses (mg/kg, mg/kg/day divided), liquid dose volumes, infusion rates, kg/lb
conversions (1 kg = 2.2 lb), degrees C to F, and mcg/mg. Arithmetic is done in `Decimal` and shown in the worked
steps of `training.demo.steps`; results that are not whole are rounded half-up to one decimal, which the prompt says.
The completion ends with "Answer: <value> <unit>" and the row's "answer" is "<value> <unit>".
The facts (normal ranges, drug classes, antidotes) are standard textbook values, for a demo, not for clinical use.
Each kind has several phrasings; the last one is held out of training (`training.demo.sampling`).
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

from training.demo.steps import div_line, mul_line, worked_example
from training.demo.surface import vary

_ONE_DECIMAL = Decimal("0.1")
Problem = tuple[dict, list[str], str]


def fmt(x: Decimal | int) -> str:
    """A number without trailing zeros: 600, 12.5, 0.25."""
    d = Decimal(x)
    if d == d.to_integral_value():
        return str(d.quantize(Decimal(1)))
    return format(d.normalize(), "f")


def _round1(x: Decimal) -> Decimal:
    return x.quantize(_ONE_DECIMAL, rounding=ROUND_HALF_UP)


DRUGS_MG_PER_KG: tuple[str, ...] = ("amoxicillin", "cefazolin", "acetaminophen", "ibuprofen", "gentamicin",
                                    "vancomycin")
LIQUIDS: tuple[str, ...] = ("amoxicillin suspension", "acetaminophen syrup", "cephalexin suspension", "ibuprofen syrup")
FLUIDS: tuple[str, ...] = ("normal saline", "lactated Ringer's", "dextrose 5% in water", "half normal saline")


def _dose(rng: random.Random) -> Problem:
    w, d = rng.randint(8, 90), rng.choice((2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25))
    # no 90 kg toddler: the words fit the weight
    who = ("child", "patient", "toddler") if w <= 20 else ("child", "patient") if w <= 40 else \
        ("patient", "man", "woman")
    f = {"who": rng.choice(who), "w": w, "d": d,
         "drug": rng.choice(DRUGS_MG_PER_KG)}
    return f, [f"Dose: {mul_line(w, d)} mg"], f"{w * d} mg"


def _tablets(rng: random.Random) -> Problem:
    strength = rng.choice((5, 10, 20, 25, 50, 100, 125, 250, 500))
    n = rng.choice((1, 2, 2, 3, 4)) if strength >= 100 else rng.randint(1, 6)
    half = strength % 2 == 0 and rng.random() < 0.2
    if n == 1 and not half:  # "1 tablets": make it two
        n = 2
    order = strength * n + (strength // 2 if half else 0)
    count = f"{n}.5" if half else str(n)
    f = {"order": order, "strength": strength, "drug": rng.choice(DRUGS_MG_PER_KG + ("metoprolol", "warfarin"))}
    return f, [f"Tablets: {order} mg / {strength} mg = {count} tablets"], f"{count} tablets"


def _per_dose(rng: random.Random) -> Problem:
    doses = rng.choice((2, 3, 4))
    while True:
        w, d = rng.randint(6, 60), rng.choice((10, 15, 20, 30, 40, 50))
        if (w * d) % doses == 0:
            break
    total = w * d
    f = {"w": w, "d": d, "doses": doses, "drug": rng.choice(DRUGS_MG_PER_KG)}
    steps = [f"Per day: {mul_line(w, d)} mg", f"Each dose: {div_line(total, doses)} mg"]
    return f, steps, f"{total // doses} mg"


def _divided(rng: random.Random) -> Problem:
    hours = rng.choice((6, 8, 12))
    doses = 24 // hours
    while True:
        w, d = rng.randint(8, 80), rng.choice((10, 20, 30, 40))
        if (w * d) % doses == 0:
            break
    total = w * d
    f = {"w": w, "d": d, "hours": hours, "drug": rng.choice(DRUGS_MG_PER_KG)}
    steps = [f"{w} * {d} = {w} * {d // 10} * 10 = {w * d // 10} * 10 = {total} mg per day",
             f"24 / {hours} = {doses} doses", f"{div_line(total, doses)} mg"]  # fmt: skip
    return f, steps, f"{total // doses} mg"


def _liquid(rng: random.Random) -> Problem:
    conc, vol = rng.choice(((125, 5), (250, 5), (100, 5), (200, 5), (50, 1), (40, 1)))
    quarters = rng.choice((2, 4, 6, 8))  # the dose is 2, 4, 6 or 8 quarters of the stock: exact volumes
    dose = Decimal(conc) * quarters / 4
    ratio = Decimal(quarters) / 4
    ml = ratio * vol
    f = {"dose": fmt(dose), "conc": conc, "vol": vol, "drug": rng.choice(LIQUIDS)}
    steps = [f"{fmt(dose)} mg / {conc} mg = {fmt(ratio)}", f"{fmt(ratio)} * {vol} mL = {fmt(ml)} mL"]
    return f, steps, f"{fmt(ml)} mL"


def _infusion(rng: random.Random) -> Problem:
    hours = rng.choice((2, 4, 5, 6, 8, 10, 12))
    rate = rng.randint(2, 50) * 5
    f = {"volume": rate * hours, "hours": hours, "fluid": rng.choice(FLUIDS)}
    return f, [f"{div_line(rate * hours, hours)} mL/h"], f"{rate} mL/h"


def _kg_to_lb(rng: random.Random) -> Problem:
    kg = rng.randint(10, 120)
    lb = Decimal(kg) * Decimal("2.2")
    steps = [f"{kg} * 2.2 = {kg} * 2 + {kg} * 0.2 = {kg * 2} + {fmt(Decimal(kg) * Decimal('0.2'))} = {fmt(lb)} lb"]
    return {"kg": kg}, steps, f"{fmt(lb)} lb"


def _lb_to_kg(rng: random.Random) -> Problem:
    kg = rng.randint(2, 30) * 5
    lb = kg * 11 // 5  # kg * 2.2, whole because kg is a multiple of 5
    return {"lb": lb}, [f"{lb} / 2.2 = {lb * 10} / 22 = {kg} kg"], f"{kg} kg"


def _c_to_f(rng: random.Random) -> Problem:
    c = rng.randint(35, 42)
    scaled = Decimal(c * 9) / 5
    f = scaled + 32
    steps = [f"{c} * 9 = {c * 9}", f"{c * 9} / 5 = {fmt(scaled)}", f"{fmt(scaled)} + 32 = {fmt(f)} F"]
    return {"c": c}, steps, f"{fmt(f)} F"


def _mcg_to_mg(rng: random.Random) -> Problem:
    mcg = rng.randint(1, 400) * 25
    mg = Decimal(mcg) / 1000
    return {"mcg": mcg}, [f"{mcg} mcg / 1000 = {fmt(mg)} mg"], f"{fmt(mg)} mg"


def _mg_to_mcg(rng: random.Random) -> Problem:
    mg = Decimal(rng.randint(1, 200)) / 4
    return {"mg": fmt(mg)}, [f"{fmt(mg)} mg * 1000 = {fmt(mg * 1000)} mcg"], f"{fmt(mg * 1000)} mcg"


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



def _range(rng: random.Random) -> Problem:
    what, value = rng.choice(NORMAL_RANGES)
    return {"what": what}, [f"The normal range for {what} is {value}."], value


def _class(rng: random.Random) -> Problem:
    drug, cls = rng.choice(DRUG_CLASSES)
    return {"drug": drug}, [f"{drug.capitalize()} belongs to the {cls} class."], cls


def _antidote(rng: random.Random) -> Problem:
    what, antidote = rng.choice(ANTIDOTES)
    return {"what": what}, [f"The antidote for {what} is {antidote}."], antidote


# kind -> (problem, phrasings); the last phrasing of each kind is held out of training
KINDS: dict[str, tuple] = {
    "dose": (_dose, (
        "A patient weighs {w} kg. The dose is {d} mg/kg. How many mg?",
        "A {who} weighs {w} kg. The order is {drug} {d} mg/kg. How many mg should be given?",
        "How many mg of {drug} does a {w} kg {who} need at {d} mg/kg?",
        "{drug} is dosed at {d} mg/kg. What dose in mg is right for a {who} who weighs {w} kg?",
    )),
    "tablets": (_tablets, (
        "The order is {drug} {order} mg. Tablets are {strength} mg each. How many tablets should be given?",
        "{drug} {order} mg is prescribed and each tablet contains {strength} mg. How many tablets is that?",
        "How many {strength} mg tablets make a {order} mg dose of {drug}?",
        "A patient needs {order} mg of {drug}. The pharmacy has {strength} mg tablets. How many tablets?",
    )),
    "per_dose": (_per_dose, (
        "A {w} kg child gets {drug} {d} mg/kg/day split into {doses} equal doses. How many mg is each dose?",
        "{drug} is given at {d} mg/kg per day in {doses} doses. For a patient of {w} kg, what is one dose in mg?",
        "Each day a {w} kg patient should get {d} mg/kg of {drug}, divided into {doses} doses. How much per dose?",
        "What is each of {doses} daily doses in mg, if a {w} kg child is dosed at {d} mg/kg/day of {drug}?",
    )),
    "divided": (_divided, (
        "A patient weighs {w} kg. {drug} is ordered at {d} mg/kg/day divided every {hours} hours. How many mg per "
        "dose?",
        "{drug} {d} mg/kg/day is given in equal doses every {hours} hours to a {w} kg child. What is each dose in mg?",
        "What single dose in mg is given every {hours} hours when a {w} kg patient gets {drug} at {d} mg/kg per day?",
    )),
    "liquid": (_liquid, (
        "Give {dose} mg of {drug}. The stock is {conc} mg per {vol} mL. How many mL should be given? Round to one "
        "decimal.",
        "The {drug} on hand is {conc} mg in {vol} mL. How many mL contain {dose} mg? Round to one decimal.",
        "A dose of {dose} mg is ordered and the bottle says {conc} mg/{vol} mL. What volume in mL do you draw up? "
        "Round to one decimal.",
    )),
    "infusion": (_infusion, (
        "Infuse {volume} mL of {fluid} over {hours} hours. What is the rate in mL/h?",
        "{volume} mL of {fluid} must run in over {hours} hours. Set the pump to how many mL/h?",
        "At what rate in mL per hour does a {volume} mL bag of {fluid} finish in {hours} hours?",
    )),
    "kg_to_lb": (_kg_to_lb, (
        "Convert {kg} kg to lb (1 kg = 2.2 lb).",
        "A patient weighs {kg} kg. What is that in pounds (1 kg = 2.2 lb)?",
        "How many lb is {kg} kg, using 2.2 lb per kg?",
    )),
    "lb_to_kg": (_lb_to_kg, (
        "Convert {lb} lb to kg (1 kg = 2.2 lb).",
        "A patient weighs {lb} pounds. What is the weight in kg (1 kg = 2.2 lb)?",
        "How many kilograms is {lb} lb, using 2.2 lb per kg?",
    )),
    "c_to_f": (_c_to_f, (
        "A temperature is {c} C. What is it in F?",
        "Convert a body temperature of {c} degrees Celsius to Fahrenheit.",
        "The patient's temperature is {c} C. Express it in degrees F.",
    )),
    "mcg_to_mg": (_mcg_to_mg, (
        "Convert {mcg} mcg to mg.",
        "How many mg is {mcg} micrograms?",
        "Express {mcg} mcg in milligrams.",
    )),
    "mg_to_mcg": (_mg_to_mcg, (
        "Convert {mg} mg to mcg.",
        "How many micrograms are in {mg} mg?",
        "Express {mg} mg in mcg.",
    )),
    "range": (_range, (
        "What is the normal range for {what}?",
        "Give the normal range of {what}.",
        "What values are normal for {what}?",
        "In a healthy adult, what is the reference range of {what}?",
    )),
    "class": (_class, (
        "What drug class does {drug} belong to?",
        "Which drug class is {drug} in?",
        "Name the drug class of {drug}.",
        "{drug} is a member of which class of drugs?",
    )),
    "antidote": (_antidote, (
        "What is the antidote for {what}?",
        "Which drug reverses {what}?",
        "What do you give to treat {what}?",
    )),
}  # fmt: skip


def render(kind: str, phrasing: int, rng: random.Random) -> dict:
    """One example of `kind` in phrasing `phrasing`: {"prompt", "completion", "answer"}, the prompt capitalised."""
    ex = worked_example(KINDS, kind, phrasing, rng, capitalize=True)
    text = vary(ex["prompt"], rng, p_distract=0.2, p_prefix=0.2, p_question_first=0.15)
    ex["prompt"] = text[0].upper() + text[1:]
    return ex

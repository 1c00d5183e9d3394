"""Synthetic, labelled conversations between a registered dietitian (RD) and a patient.

Approach
--------
Labels come first, text second. For every conversation we:

1. Draw target scores (1-5) for empathy, clarity, accuracy and professionalism.
   Scores are drawn in blocks of five: each block holds every value 1..5 once per
   dimension, so any n >= 5 (and hence any n >= 50) covers the full range. A shared
   latent "session quality" nudges the ranks, so dimensions are only loosely
   correlated and a reader has to judge each one separately.
2. Pick a topic (13 clinical areas, each with its own concerns, vocabulary, and
   advice graded from unsafe to evidence-based), a patient persona (name, age, mood)
   and an RD.
3. Write the conversation turn by turn, choosing each RD turn from a bank keyed by
   the target level of the dimension it expresses: empathy drives how the RD reacts
   to feelings, clarity drives how advice is phrased (plain steps and teach-back vs
   jargon and rambling), accuracy drives what the advice says, and professionalism
   drives the opening, the behaviour mid-session and the close.
4. Derive ``reasoning``, ``strengths`` and ``areas_for_improvement`` from the same
   choices, so every label can be traced back to something the RD actually said.

Everything is driven by one ``random.Random(seed)``, so output is deterministic for
a given ``(n, seed)``. Transcripts are unique within a call; on a (rare) collision
the text is redrawn from the same generator.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import NamedTuple

SAMPLE_DIMENSIONS: tuple[str, ...] = ("empathy", "clarity", "accuracy", "professionalism")

_LEVELS = (1, 2, 3, 4, 5)
_MAX_REDRAWS = 100
_REASONING_LIMIT = 800
_BULLET_LIMIT = 160


# ---------------------------------------------------------------------------
# Bank types
# ---------------------------------------------------------------------------


class Advice(NamedTuple):
    """One piece of RD advice: what the RD says, and a short verb phrase for it."""

    text: str
    action: str  # fits "I'll ...", "advice to ...", "you ..."


class Topic(NamedTuple):
    """A clinical area with its own patient lines, vocabulary and graded advice."""

    name: str  # "chronic kidney disease"
    short: str  # "your kidney diet"
    referral: str  # professional to refer to when out of scope
    reason: str  # why a referral is needed; fits "Because ..."
    female_only: bool
    ages: tuple[int, int]
    concerns: tuple[str, ...]
    details: tuple[str, ...]
    questions: tuple[str, ...]
    jargon: tuple[tuple[str, str], ...]  # (term, plain-language meaning)
    advice: dict[int, tuple[Advice, ...]]  # accuracy level -> advice


class Mood(NamedTuple):
    """How the patient comes across; colours their lines and the RD's reflections."""

    feeling: str  # fits "It sounds like you're ..."
    openers: tuple[str, ...]
    worries: tuple[str, ...]
    acks: tuple[str, ...]


class Act(NamedTuple):
    """A professional (or unprofessional) behaviour and how a reviewer would describe it."""

    text: str
    gist: str
    fix: str = ""


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------

_A = Advice

TOPICS: tuple[Topic, ...] = (
    Topic(
        name="weight management",
        short="managing your weight",
        referral="your GP",
        reason="questions about weight-loss medication are outside my scope",
        female_only=False,
        ages=(24, 66),
        concerns=(
            "I've tried every diet going and the weight always comes back.",
            "My doctor says I need to lose weight for my knees, but I don't know where to start.",
            "I'm {age} and I've put on about fifteen kilos over the last few years, mostly from evening snacking.",
        ),
        details=(
            "I skip breakfast, grab something from the vending machine at work, and then I'm starving by dinner.",
            "Evenings are the worst. I sit in front of the TV with crisps and biscuits.",
            "I work shifts, so my meals are all over the place.",
        ),
        questions=(
            "What else should I be changing day to day?",
            "Is there anything else that would help with the weight?",
        ),
        jargon=(
            ("energy deficit", "eating a bit less energy than your body uses"),
            ("satiety", "how full and satisfied you feel"),
            ("thermic effect of food", "the energy your body uses digesting food"),
            ("energy density", "how many calories are packed into each bite"),
        ),
        advice={
            5: (
                _A("A slow, steady loss of about half a kilo a week is realistic and more likely to last than a strict diet, and we can adjust the plan to fit your routine as we go.", "aim for a steady loss of about half a kilo a week"),
                _A("A breakfast with some protein, like eggs or Greek yoghurt, helps many people feel less hungry later in the day. It doesn't suit everyone, so let's try it for two weeks and see.", "try a protein breakfast for two weeks"),
                _A("Filling half the plate with vegetables, a quarter with protein and a quarter with starchy food is a flexible guide, and we can plan two or three simple meals that suit your week.", "use the half-plate vegetables guide for main meals"),
            ),
            4: (
                _A("Filling half your plate with vegetables and including protein at each meal helps you feel full.", "fill half the plate with vegetables and add protein"),
                _A("Cutting down on sugary drinks and keeping snacks out of easy reach are sensible places to start.", "cut sugary drinks and keep snacks out of reach"),
            ),
            3: (
                _A("Just try to eat a bit healthier overall and cut back on fatty foods.", "eat a bit healthier and cut back on fat"),
                _A("Try not to eat after 6 pm, because that's when the body stores fat.", "stop eating after 6 pm"),
                _A("Count your calories carefully and choose low-fat versions of everything.", "count calories and choose low-fat products"),
            ),
            2: (
                _A("Carbs are what make you put on weight, so cut out bread, rice and potatoes completely.", "cut out bread, rice and potatoes completely"),
                _A("Fruit is full of sugar, so it's best to avoid it while you're trying to lose weight.", "avoid fruit because of its sugar"),
            ),
            1: (
                _A("The quickest way is to live on about 600 calories a day for a couple of months. There's no need to involve your doctor.", "eat about 600 calories a day without medical supervision"),
                _A("Skip meals for a couple of days each week and take laxatives to clear things out. It speeds everything up.", "skip meals for days and use laxatives"),
                _A("Cut carbohydrates to zero and live on meal-replacement shakes. You don't need vegetables or anything else.", "cut carbs to zero and live on shakes"),
            ),
        },
    ),
    Topic(
        name="type 2 diabetes",
        short="your diabetes",
        referral="your GP or diabetes nurse",
        reason="any change to your tablets or insulin is outside my scope",
        female_only=False,
        ages=(38, 78),
        concerns=(
            "I was diagnosed with type 2 diabetes last month and I'm scared I can't eat anything anymore.",
            "My HbA1c went up again and the doctor wants me to see you before they add another tablet.",
            "I'm {age}, I've had diabetes for ten years, and I'm sick of being told off about my sugars.",
        ),
        details=(
            "I have toast and jam for breakfast, a sandwich at lunch and a big plate of pasta in the evening.",
            "I drink a lot of fruit juice because I thought it was healthy.",
            "I'm on metformin and sometimes I skip lunch to keep my sugars down.",
        ),
        questions=(
            "Is there anything else I should change with my diabetes?",
            "What else can I do to get my sugars down?",
        ),
        jargon=(
            ("glycaemic index", "how quickly a food raises your blood sugar"),
            ("HbA1c", "your average blood sugar over about three months"),
            ("postprandial glucose", "your blood sugar after meals"),
            ("insulin resistance", "your body not responding well to its own insulin"),
        ),
        advice={
            5: (
                _A("You don't need to cut out carbohydrates. Moderate portions spread across the day, choosing wholegrain versions, usually give steadier sugars, and we'll check that against your home readings.", "spread moderate wholegrain carbs through the day"),
                _A("Swapping fruit juice for water and eating whole fruit instead is one of the most effective changes, because juice raises blood sugar quickly. Whole fruit is still fine.", "swap juice for water and whole fruit"),
                _A("Regular, smaller meals tend to keep sugars steadier than skipping meals. If your readings ever run low, tell your diabetes nurse, as your tablets may need reviewing.", "eat regular smaller meals instead of skipping"),
            ),
            4: (
                _A("Include vegetables and some protein with each meal and keep starchy portions moderate.", "keep starchy portions moderate with vegetables and protein"),
                _A("Cut back on sugary drinks and choose water or sugar-free options instead.", "replace sugary drinks with water"),
            ),
            3: (
                _A("Just avoid sugar and sweet things and you'll be fine.", "just avoid sugar and sweets"),
                _A("Diabetic-labelled sweets and biscuits are a good swap.", "buy diabetic-labelled sweets and biscuits"),
                _A("The general rule is six small meals a day, more or less.", "eat six small meals a day"),
            ),
            2: (
                _A("Fruit is off limits now. It's basically just sugar.", "stop eating fruit entirely"),
                _A("Skipping meals is a good way to keep your sugars down, so carry on skipping lunch.", "keep skipping lunch to lower blood sugar"),
            ),
            1: (
                _A("Once your sugars look good for a week, you can stop taking your diabetes medication. Diet alone will sort it.", "stop diabetes medication once sugars look good"),
                _A("If you end up on insulin, just skip a dose whenever your readings look fine. You won't need it on those days.", "skip insulin doses when readings look fine"),
                _A("Cut carbohydrates to zero starting today, and stop the tablets while you do it.", "cut carbs to zero and stop the tablets"),
            ),
        },
    ),
    Topic(
        name="gestational diabetes and pregnancy nutrition",
        short="eating well in your pregnancy",
        referral="your midwife and obstetric team",
        reason="medication and the baby's growth scans are managed by your obstetric team",
        female_only=True,
        ages=(21, 42),
        concerns=(
            "I'm 28 weeks pregnant and they've just told me I have gestational diabetes. I feel like I've already harmed the baby.",
            "I'm {age} and pregnant with my first, and everyone keeps telling me different things about what I can eat.",
            "My glucose test came back high and now I'm terrified of eating anything.",
        ),
        details=(
            "I've been eating for two, honestly: big bowls of cereal and lots of juice.",
            "I have a glass of wine at the weekend to relax. My mum says that's fine.",
            "I'm craving sweet things all the time and I'm exhausted.",
        ),
        questions=(
            "Is there anything else I should be doing for the baby?",
            "What else should I watch while I'm pregnant?",
        ),
        jargon=(
            ("OGTT", "the sugary drink test you had"),
            ("macrosomia", "the baby growing larger than expected"),
            ("fasting glucose target", "the blood sugar number we aim for before breakfast"),
            ("listeriosis", "an infection you can catch from certain foods"),
        ),
        advice={
            5: (
                _A("We don't know of any safe amount of alcohol in pregnancy, so the safest choice is none at all. I know that's hard when people tell you different things.", "avoid alcohol completely during pregnancy"),
                _A("Smaller carbohydrate portions spread over three meals and a few snacks, paired with some protein, usually help keep readings in range. Your team will confirm your exact targets.", "spread smaller carb portions with protein across the day"),
                _A("Keep taking the pregnancy vitamin your midwife recommended, and avoid higher-risk foods like unpasteurised soft cheese, pâté and undercooked meat.", "keep the pregnancy vitamin and avoid high-risk foods"),
            ),
            4: (
                _A("Avoid alcohol, and choose wholegrain carbs in smaller portions.", "avoid alcohol and choose smaller wholegrain portions"),
                _A("Swap juice for water and have a small snack with some protein before bed.", "swap juice for water and have a protein snack before bed"),
            ),
            3: (
                _A("You're eating for two now, so just listen to your body.", "eat for two and listen to your body"),
                _A("Cut down on sugar a bit and don't worry too much about the rest.", "cut down on sugar a bit"),
            ),
            2: (
                _A("Cut out carbohydrates as much as you can. The baby doesn't need them.", "cut out carbohydrates as much as possible"),
                _A("Skip breakfast so your morning numbers look better.", "skip breakfast to improve the morning readings"),
            ),
            1: (
                _A("A glass or two of wine a few times a week is fine in pregnancy. It'll help you relax.", "drink wine a few times a week while pregnant"),
                _A("Soft unpasteurised cheese and rare steak are fine. Those warnings are overblown.", "eat unpasteurised cheese and rare meat"),
                _A("If they put you on insulin, you can skip it on days when you've eaten well.", "skip prescribed insulin on days you eat well"),
            ),
        },
    ),
    Topic(
        name="chronic kidney disease",
        short="your kidney diet",
        referral="your renal team",
        reason="your fluid allowance and phosphate binders are set by the renal team",
        female_only=False,
        ages=(44, 82),
        concerns=(
            "I've just started haemodialysis three times a week and the list of foods I can't eat is overwhelming.",
            "My kidney function has dropped and the consultant said to watch potassium and phosphate, but I don't know what that means.",
            "I'm {age}, I'm on dialysis, and I'm always thirsty. I can't stick to the fluid limit.",
        ),
        details=(
            "I have a banana every morning and orange juice because I thought it was healthy.",
            "I eat a lot of ready meals and cheese sandwiches.",
            "I keep forgetting to take the phosphate binders with my meals.",
        ),
        questions=(
            "What else should I be watching for my kidneys?",
            "Is there anything else that would help?",
        ),
        jargon=(
            ("eGFR", "a measure of how well your kidneys are filtering"),
            ("hyperkalaemia", "too much potassium in the blood"),
            ("phosphate binders", "tablets that stop phosphate from food being absorbed"),
            ("interdialytic weight gain", "the fluid you build up between dialysis sessions"),
        ),
        advice={
            5: (
                _A("Bananas and orange juice are high in potassium, so swap them for lower-potassium fruit like apples or berries in the portions we agree. We'll recheck after your next blood test.", "swap bananas and juice for lower-potassium fruit"),
                _A("Take your phosphate binders with the first bite of each meal, and limit processed foods with phosphate additives. Your renal team may adjust the dose.", "take binders with meals and limit phosphate additives"),
                _A("For thirst, cutting salt helps most. Ice cubes counted in your allowance and a smaller cup can help too, but your renal team sets the exact limit.", "cut salt and use ice and small cups for thirst"),
            ),
            4: (
                _A("Choose lower-potassium fruit like apples and limit bananas and oranges.", "choose lower-potassium fruits"),
                _A("Keep salt down and stick to your fluid allowance.", "keep salt down and stick to the fluid allowance"),
            ),
            3: (
                _A("Try to eat a bit less salt and generally go easy on fruit.", "eat less salt and go easy on fruit"),
                _A("Be careful with potassium foods and phosphate, roughly speaking.", "be roughly careful with potassium and phosphate"),
            ),
            2: (
                _A("Now you're on dialysis you should cut protein right down.", "cut protein right down while on dialysis"),
                _A("Dairy is your best protein source, so have plenty of milk and cheese.", "have plenty of milk and cheese for protein"),
            ),
            1: (
                _A("Bananas, oranges and potatoes are healthy, so eat as many as you like. Potassium isn't a worry for you.", "eat high-potassium foods freely"),
                _A("Use a salt substitute like LoSalt instead of salt. It's much better for your kidneys.", "use a potassium-based salt substitute"),
                _A("Drink two or three litres of water a day to flush your kidneys out, whatever the dialysis unit says.", "drink two to three litres of water a day on dialysis"),
            ),
        },
    ),
    Topic(
        name="eating disorder recovery",
        short="your recovery",
        referral="your therapist and the eating disorder team",
        reason="the thoughts and feelings around food are best worked on with your therapist",
        female_only=False,
        ages=(16, 36),
        concerns=(
            "I'm in recovery from anorexia and my meal plan says three meals and three snacks, but it feels like way too much.",
            "I've been bingeing and then restricting for months and I'm ashamed to even say it.",
            "My treatment team sent me here. I'm {age} and I'm scared that if I eat more I'll just keep gaining.",
        ),
        details=(
            "I still count every calorie in my head, even when I try not to.",
            "Some days I manage breakfast, but then I skip lunch to make up for it.",
            "I avoid eating in front of people, especially at work.",
        ),
        questions=(
            "What else can I do to make meals easier?",
            "Is there anything else that helps in recovery?",
        ),
        jargon=(
            ("refeeding", "building food back up gradually after a period of restriction"),
            ("restrict-binge cycle", "the pattern where cutting back leads to bingeing"),
            ("gastric emptying", "how quickly your stomach empties after eating"),
            ("mechanical eating", "eating by the clock rather than waiting for hunger"),
        ),
        advice={
            5: (
                _A("Regular eating, three meals and two or three snacks, is the foundation of recovery. It can feel like a lot at first, and the fullness usually eases as your body adjusts. We'll go at a pace your team agrees.", "eat three meals and snacks regularly, paced with the team"),
                _A("Skipping a meal to make up for an earlier one tends to keep the restrict-binge cycle going, so we'll aim to keep every meal, even on hard days, and talk through what helps.", "keep every meal, even after eating more earlier"),
                _A("I'd suggest leaving weighing to your team, who will do it with you in the way you've agreed, rather than weighing at home.", "leave weighing to the treatment team"),
            ),
            4: (
                _A("Try to eat regularly through the day and not skip meals.", "eat regularly without skipping meals"),
                _A("Include all the food groups, including some foods you enjoy.", "include all food groups and foods you enjoy"),
            ),
            3: (
                _A("Just try to eat normally and listen to your hunger.", "eat normally and follow hunger cues"),
                _A("Snacks are optional really. See how you feel.", "treat snacks as optional"),
            ),
            2: (
                _A("Focus on clean foods and cut out junk food completely so you don't binge.", "eat only clean foods and ban junk food"),
                _A("Weigh yourself every day at home so you can keep an eye on things.", "weigh yourself daily at home"),
            ),
            1: (
                _A("If you've binged, just skip the next day's meals to balance it out.", "skip a day's meals after a binge"),
                _A("You could try an 800-calorie plan to keep the weight gain under control.", "follow an 800-calorie diet during recovery"),
                _A("A bit of restriction is fine. Drop the snacks whenever you're not hungry.", "drop snacks and restrict when not hungry"),
            ),
        },
    ),
    Topic(
        name="a child's peanut allergy",
        short="your child's peanut allergy",
        referral="the allergy clinic",
        reason="any change to allergen exposure has to be supervised by the allergy clinic",
        female_only=False,
        ages=(26, 47),
        concerns=(
            "My son is four and was diagnosed with a peanut allergy after his face swelled up at a party. I'm terrified of feeding him anything.",
            "My daughter has a peanut allergy and starts school next month. I don't know how to keep her safe.",
            "I'm {age}, and since my little boy's reaction to peanuts I've been cutting out more and more foods just in case.",
        ),
        details=(
            "I've stopped buying anything with a 'may contain' label, and now the kids' menu is tiny.",
            "The grandparents don't really take the allergy seriously.",
            "We carry the auto-injector sometimes, but it's bulky, so it often stays at home.",
        ),
        questions=(
            "What else do we need to do to keep our child safe?",
            "Is there anything else we should change at home?",
        ),
        jargon=(
            ("IgE-mediated", "the type of allergy that causes fast reactions"),
            ("anaphylaxis", "a severe, life-threatening allergic reaction"),
            ("cross-contact", "traces of peanut getting into food from surfaces or utensils"),
            ("oral immunotherapy", "a carefully supervised build-up of tiny doses"),
        ),
        advice={
            5: (
                _A("Carry two adrenaline auto-injectors wherever your child goes, and give school and the grandparents a written allergy action plan. The clinic can help train them.", "always carry two auto-injectors and share an action plan"),
                _A("Check every label for peanut every time, and follow the clinic's advice on 'may contain' foods for your child. There's no need to cut out other whole food groups.", "check labels every time without cutting other food groups"),
                _A("Whether to avoid tree nuts depends on testing, so let's ask the allergy clinic rather than guess. Meanwhile, keep offering a wide range of other foods for good nutrition.", "check tree nuts with the clinic and keep the diet varied"),
            ),
            4: (
                _A("Check food labels carefully for peanut and keep the auto-injector with your child.", "check labels and keep the auto-injector with the child"),
                _A("Let the school know about the allergy and give them a written plan.", "give the school a written allergy plan"),
            ),
            3: (
                _A("Just avoid nuts generally and you should be fine.", "avoid nuts generally"),
                _A("Most kids grow out of it, so it'll probably sort itself out.", "expect the child to outgrow it"),
            ),
            2: (
                _A("Cut out all nuts, seeds, beans and dairy too, just to be extra safe.", "cut out nuts, seeds, beans and dairy"),
                _A("Giving an antihistamine before parties should cover most accidental exposures.", "rely on an antihistamine before parties"),
            ),
            1: (
                _A("Give a little peanut butter each day at home to build up tolerance. There's no need to involve the clinic.", "give peanut at home to build tolerance unsupervised"),
                _A("The auto-injector is overkill. If there's a reaction, antihistamine and a lie-down will do.", "skip the auto-injector and use antihistamine instead"),
                _A("Baked goods with peanut in are fine, because cooking destroys the allergen.", "allow baked goods that contain peanut"),
            ),
        },
    ),
    Topic(
        name="sports nutrition",
        short="fuelling your training",
        referral="your sports doctor",
        reason="ongoing tiredness or injuries need a medical check",
        female_only=False,
        ages=(16, 39),
        concerns=(
            "I'm training for my first marathon and I hit a wall around 25 kilometres on every long run.",
            "I'm {age}, I play rugby, and I want to bulk up without just eating junk.",
            "I'm a competitive swimmer and I'm always exhausted at morning training.",
        ),
        details=(
            "I train before breakfast and usually just have a coffee.",
            "I'm taking three different protein powders and some pre-workout stuff from the gym.",
            "I've been trying to stay light, so I've cut back on carbs.",
        ),
        questions=(
            "What else would help my training?",
            "Is there anything else I should change around sessions?",
        ),
        jargon=(
            ("glycogen", "the carbohydrate stored in your muscles"),
            ("periodisation", "matching what you eat to how hard you're training"),
            ("RED-S", "not eating enough for the training you do"),
            ("leucine threshold", "the amount of protein that switches on muscle repair"),
        ),
        advice={
            5: (
                _A("During long sessions, aim for roughly 30 to 60 grams of carbohydrate an hour after the first hour, and practise it in training so your gut adapts. We can fine-tune the amount for you.", "take 30 to 60 grams of carbs an hour on long sessions"),
                _A("Spreading protein across the day, about 20 to 40 grams per meal, is more useful than extra powders. Food first, and any supplement you keep should be batch-tested for sport.", "spread 20 to 40 grams of protein across meals, food first"),
                _A("Cutting carbs while training this hard can leave you under-fuelled. A small carb snack before early sessions, like a banana or toast, often helps, so tell me how it feels.", "have a small carb snack before early sessions"),
            ),
            4: (
                _A("Eat a carb-based meal a few hours before training and have protein and carbs afterwards.", "have carbs before and carbs plus protein after training"),
                _A("Drink regularly and take some carbs during long sessions.", "drink regularly and take carbs on long sessions"),
            ),
            3: (
                _A("Carb-loading is basically eating loads of pasta the night before.", "carb-load with a big pasta dinner the night before"),
                _A("Protein is the main thing for athletes, so just have a shake after training.", "rely on a shake after training"),
            ),
            2: (
                _A("Train fasted as much as possible. It teaches your body to burn fat and you'll perform better.", "train fasted as much as possible"),
                _A("More protein is always better, so keep taking all three powders.", "take as much protein powder as possible"),
            ),
            1: (
                _A("Don't drink anything during long events. It just slows you down, and you can rehydrate afterwards.", "avoid drinking during long events"),
                _A("The pre-workout from the gym is fine. Take a double dose on competition day for extra energy.", "take a double dose of pre-workout"),
                _A("To make weight, stop eating and drinking for a day and sit in the sauna.", "fast, dehydrate and use the sauna to make weight"),
            ),
        },
    ),
    Topic(
        name="high blood pressure",
        short="your blood pressure",
        referral="your GP",
        reason="your blood pressure tablets are managed by your GP",
        female_only=False,
        ages=(38, 82),
        concerns=(
            "My blood pressure was 160 over 95 at my check-up and the doctor said to cut salt, but I don't even add salt.",
            "I'm {age} and I've just started blood pressure tablets. I'd rather fix it with food if I can.",
            "My dad had a stroke and now they say my blood pressure is high. I'm worried.",
        ),
        details=(
            "I eat a lot of bread, ham sandwiches and soup from packets.",
            "I have a takeaway three or four nights a week because of work.",
            "I drink about four pints most evenings.",
        ),
        questions=(
            "Is there anything else besides salt?",
            "What else can I do for my blood pressure?",
        ),
        jargon=(
            ("sodium", "the part of salt that raises blood pressure"),
            ("DASH diet", "an eating pattern rich in fruit, vegetables and low-fat dairy"),
            ("systolic pressure", "the top number of your blood pressure"),
            ("RAAS", "the hormone system that controls blood pressure"),
        ),
        advice={
            5: (
                _A("Most salt comes from bread, processed meats and ready-made foods, so checking labels and aiming for under 6 grams a day can make a real difference alongside your tablets.", "check labels and aim for under 6 grams of salt a day"),
                _A("More fruit, vegetables, pulses and low-fat dairy lowers blood pressure for many people. Keep taking your tablets, and let your GP decide on any changes.", "eat more fruit, vegetables and pulses and keep taking the tablets"),
                _A("Keeping alcohol within 14 units a week, spread out with drink-free days, should help your blood pressure too. We can plan that gradually.", "keep alcohol within 14 units a week"),
            ),
            4: (
                _A("Cut down on processed, salty foods and eat more fruit and vegetables.", "cut processed salty foods and eat more fruit and veg"),
                _A("Try to drink less alcohol and check the salt on labels.", "drink less alcohol and check salt on labels"),
            ),
            3: (
                _A("Just don't add salt at the table.", "just avoid adding salt at the table"),
                _A("Sea salt or pink salt is the healthier option, so switch to that.", "switch to sea salt or pink salt"),
            ),
            2: (
                _A("Salt only matters if you add it yourself, so packet soups and bread are fine.", "ignore the salt in bread and packet foods"),
                _A("A few pints in the evening actually relaxes the blood vessels, so that's fine.", "keep drinking a few pints each evening"),
            ),
            1: (
                _A("Once you've cut your salt, you can stop your blood pressure tablets straight away.", "stop the blood pressure tablets after cutting salt"),
                _A("Liquorice tea is a great natural way to bring blood pressure down, so drink plenty.", "drink plenty of liquorice tea"),
            ),
        },
    ),
    Topic(
        name="high cholesterol and heart health",
        short="your cholesterol",
        referral="your GP or cardiologist",
        reason="decisions about your statin are for your GP or cardiologist",
        female_only=False,
        ages=(38, 80),
        concerns=(
            "My cholesterol came back at 7.2 and my doctor wants me on a statin. I'd rather try diet first.",
            "I had a heart attack six months ago and I'm scared of eating the wrong thing.",
            "I'm {age} and high cholesterol runs in my family. I want to know what actually works.",
        ),
        details=(
            "I fry everything in butter and have a full English most weekends.",
            "I've stopped eating eggs completely because I heard they're bad for cholesterol.",
            "I snack on biscuits and pastries at work.",
        ),
        questions=(
            "What else can I do for my heart?",
            "Is there anything else I should change?",
        ),
        jargon=(
            ("LDL", "the 'bad' cholesterol"),
            ("saturated fat", "the fat in butter, fatty meat and pastries"),
            ("plant sterols", "substances added to some spreads that lower cholesterol"),
            ("atherosclerosis", "fatty build-up in the arteries"),
        ),
        advice={
            5: (
                _A("Swapping butter for olive or rapeseed oil and cutting back on pastries lowers saturated fat, which is the biggest dietary lever for LDL cholesterol.", "swap butter for olive or rapeseed oil and cut pastries"),
                _A("For most people, eggs are fine in moderation, as saturated fat matters more, so there's no need to avoid them completely.", "keep eating eggs in moderation"),
                _A("Oats, beans and lentils add soluble fibre, which helps lower cholesterol. Diet can work alongside a statin, but whether you need one is for you and your doctor to decide.", "add oats, beans and lentils alongside the doctor's plan"),
            ),
            4: (
                _A("Use less butter and more vegetable oils, and eat more fibre from oats and beans.", "use less butter and more fibre"),
                _A("Aim for two portions of fish a week, one of them oily.", "eat two portions of fish a week"),
            ),
            3: (
                _A("Cut out eggs and prawns because of the cholesterol in them.", "cut out eggs and prawns"),
                _A("Just go low-fat on everything.", "go low-fat on everything"),
            ),
            2: (
                _A("Coconut oil is a healthy fat, so cook with that instead of butter.", "cook with coconut oil"),
                _A("Fish oil capsules do the same job as changing your diet, so just take those.", "take fish oil capsules instead of changing diet"),
            ),
            1: (
                _A("If you eat well, you don't need the statin, even after a heart attack. Just stop taking it.", "stop the statin after a heart attack"),
                _A("Take red yeast rice on top of your statin to double the effect.", "combine red yeast rice with a statin"),
            ),
        },
    ),
    Topic(
        name="irritable bowel syndrome",
        short="your IBS symptoms",
        referral="your GP",
        reason="any bleeding or weight loss needs checking by your GP first",
        female_only=False,
        ages=(18, 62),
        concerns=(
            "I'm bloated every afternoon and I'm constantly running to the toilet. It's ruining my job.",
            "I've been diagnosed with IBS and I've cut out so many foods I'm down to about ten things I eat.",
            "I'm {age} and someone online said I should go low-FODMAP forever.",
        ),
        details=(
            "Onions and garlic seem to set it off, but they're in everything.",
            "I drink a lot of coffee and fizzy drinks at work.",
            "Stress makes it a hundred times worse.",
        ),
        questions=(
            "What else can I do about the symptoms?",
            "Is there anything else that helps with IBS?",
        ),
        jargon=(
            ("FODMAPs", "types of carbohydrate that can ferment in the gut"),
            ("reintroduction phase", "adding foods back one at a time"),
            ("visceral hypersensitivity", "a gut that is extra sensitive"),
            ("gut-brain axis", "the link between stress and your gut"),
        ),
        advice={
            5: (
                _A("The low-FODMAP diet is a short trial, usually two to six weeks, followed by adding foods back one at a time, so we find your own triggers rather than cutting things forever.", "do a short low-FODMAP trial then reintroduce foods"),
                _A("Long-term restriction can affect your nutrition and gut bacteria, so we'll widen your diet carefully and keep only the restrictions that clearly help you.", "widen the diet rather than restrict long term"),
                _A("Less coffee and fizzy drinks and regular mealtimes ease symptoms for many people. Stress management can help too, and I can suggest some resources.", "cut coffee and fizzy drinks and eat regularly"),
            ),
            4: (
                _A("Have regular meals, cut down on coffee, and keep a symptom diary.", "eat regularly, cut coffee and keep a symptom diary"),
                _A("A low-FODMAP diet can help, but it should be followed by reintroducing foods.", "try low-FODMAP and then reintroduce foods"),
            ),
            3: (
                _A("Just eat more fibre and it should settle down.", "eat more fibre"),
                _A("Gluten is probably the problem, so go gluten-free.", "go gluten-free"),
            ),
            2: (
                _A("Stay low-FODMAP for life. If a food causes symptoms once, cut it for good.", "stay low-FODMAP for life"),
                _A("Probiotics cure IBS, so that's really all you need.", "rely on probiotics as a cure"),
            ),
            1: (
                _A("Any bleeding or weight loss is just IBS too, so there's no need to see a doctor about it.", "ignore bleeding or weight loss as just IBS"),
                _A("Take laxatives and anti-diarrhoea tablets on alternate days to keep things even.", "alternate laxatives and anti-diarrhoea tablets"),
            ),
        },
    ),
    Topic(
        name="poor appetite in later life",
        short="your appetite and weight",
        referral="your GP",
        reason="any weight loss you weren't trying for should be reviewed by your GP",
        female_only=False,
        ages=(74, 95),
        concerns=(
            "I'm {age} and since my partner died I just don't feel like eating. My clothes are hanging off me.",
            "My daughter made me come. She says I've lost weight, but I'm just not hungry anymore.",
            "I'm {age}, I live alone, and cooking for one doesn't seem worth it.",
        ),
        details=(
            "Most days it's tea and a biscuit, maybe some toast.",
            "My dentures hurt, so I avoid meat.",
            "I get full after a few mouthfuls.",
        ),
        questions=(
            "What else can I do if I'm just not hungry?",
            "Is there anything else that would help?",
        ),
        jargon=(
            ("sarcopenia", "losing muscle as we get older"),
            ("food fortification", "adding extra energy and protein to normal food"),
            ("MUST score", "a quick check for the risk of malnutrition"),
            ("oral nutritional supplements", "nourishing drinks a doctor can prescribe"),
        ),
        advice={
            5: (
                _A("Small meals and snacks every two to three hours are often easier than three big meals, and adding milk powder, cheese or butter boosts energy and protein without extra volume.", "eat small frequent meals and fortify foods"),
                _A("Losing weight without trying is a concern at your age, so we'll aim to keep your weight steady or regain a little. Protein at each meal helps keep your muscles strong.", "aim to keep weight steady with protein at each meal"),
                _A("Softer protein foods like eggs, fish, mince or yoghurt may be easier with sore dentures, and it's worth seeing your dentist about the fit.", "choose softer proteins and see the dentist"),
            ),
            4: (
                _A("Have small, frequent meals and nourishing drinks like milky coffee or hot chocolate.", "have small frequent meals and nourishing drinks"),
                _A("Include some protein like eggs or yoghurt every day.", "include protein foods every day"),
            ),
            3: (
                _A("Just try to eat three proper meals a day.", "eat three proper meals a day"),
                _A("A daily multivitamin should cover whatever you're missing.", "rely on a multivitamin"),
            ),
            2: (
                _A("At your age a bit of weight loss is healthy, so don't worry about it.", "accept the weight loss as healthy"),
                _A("Go for low-fat, diet versions of everything to protect your heart.", "choose low-fat diet products"),
            ),
            1: (
                _A("If you're not hungry, don't force it. Going without food for a few days won't hurt you.", "go without food for days when not hungry"),
                _A("Black coffee and a biscuit is plenty at your age, so you can skip proper meals.", "replace meals with black coffee and a biscuit"),
            ),
        },
    ),
    Topic(
        name="vegan and vegetarian eating",
        short="planning your vegan diet",
        referral="your GP",
        reason="checking your B12 and iron levels needs a blood test from your GP",
        female_only=False,
        ages=(17, 52),
        concerns=(
            "I went vegan three months ago and I've been feeling really tired.",
            "I'm {age} and I want to go vegetarian, but my family says I won't get enough protein.",
            "I'm vegan and training for a half marathon, and I'm not sure I'm eating enough.",
        ),
        details=(
            "I mostly eat pasta with tomato sauce and salads.",
            "I don't take any supplements. I thought a plant diet had everything.",
            "I don't really like beans or tofu.",
        ),
        questions=(
            "What else do I need to think about on a plant-based diet?",
            "Is there anything else I might be missing?",
        ),
        jargon=(
            ("cobalamin", "vitamin B12"),
            ("non-haem iron", "the type of iron found in plants"),
            ("complete protein", "protein with all the building blocks your body needs"),
            ("ALA to EPA conversion", "how your body makes omega-3 fats from plant sources"),
        ),
        advice={
            5: (
                _A("A vegan diet can be very healthy, but vitamin B12 isn't reliably found in plants, so a B12 supplement or fortified foods are essential. If you're feeling tired, your GP can check your levels.", "take B12 and have levels checked by the GP"),
                _A("For iron, include pulses, tofu, fortified cereals and leafy greens, with a vitamin C food like peppers or fruit at the same meal to help absorption.", "pair plant iron with vitamin C foods"),
                _A("Mixing protein sources across the day, such as lentils, soya, nuts, seeds and grains, gives you all the amino acids you need, so enough protein is very achievable.", "mix plant proteins across the day"),
            ),
            4: (
                _A("Take a B12 supplement and include beans, lentils or tofu most days.", "take B12 and eat pulses or tofu most days"),
                _A("Use a fortified plant milk for calcium.", "use fortified plant milk for calcium"),
            ),
            3: (
                _A("Just eat a wide variety of vegetables and you'll get everything.", "eat a wide variety of vegetables"),
                _A("You need to combine proteins carefully at every single meal.", "combine proteins at every meal"),
            ),
            2: (
                _A("Spirulina and seaweed give you all the B12 you need.", "rely on spirulina or seaweed for B12"),
                _A("Soya messes with your hormones, so avoid it completely.", "avoid soya completely"),
            ),
            1: (
                _A("You don't need B12. A vegan diet covers everything, so just ignore the tiredness.", "skip B12 and ignore the tiredness"),
                _A("A fruit-only diet is the healthiest way to be vegan. You don't need anything else.", "follow a fruit-only diet"),
            ),
        },
    ),
    Topic(
        name="coeliac disease",
        short="your coeliac disease",
        referral="your gastroenterologist",
        reason="follow-up blood tests and bone checks are arranged by your gastroenterologist",
        female_only=False,
        ages=(18, 72),
        concerns=(
            "I was diagnosed with coeliac disease last week and I'm overwhelmed by what I can't eat.",
            "I'm {age} and I've been gluten-free for a year, but I still get symptoms.",
            "I've got coeliac disease and I really miss eating out with friends.",
        ),
        details=(
            "I still use the same toaster as the rest of the family.",
            "I've been having normal oats and the odd beer.",
            "I sometimes have a bit of regular bread if it's just a small amount.",
        ),
        questions=(
            "What else do I need to watch with coeliac disease?",
            "Is there anything else I should know?",
        ),
        jargon=(
            ("tTG antibodies", "a blood test that shows gluten exposure"),
            ("villous atrophy", "damage to the lining of the gut"),
            ("cross-contamination", "gluten getting into food from shared surfaces"),
            ("Codex wheat starch", "a specially treated wheat starch"),
        ),
        advice={
            5: (
                _A("Even small amounts of gluten can damage the gut in coeliac disease, so the diet needs to be strictly gluten-free, and a separate toaster or toaster bags will stop cross-contamination.", "stay strictly gluten-free and use a separate toaster"),
                _A("Pure, uncontaminated oats are tolerated by most people with coeliac disease, but a few react, so we'll introduce them once your symptoms settle and review how you get on.", "introduce uncontaminated oats carefully"),
                _A("Most beer contains gluten, so choose gluten-free beer, wine or spirits. When eating out, ask how food is prepared, not just what's in it.", "choose gluten-free drinks and ask how food is prepared"),
            ),
            4: (
                _A("Avoid wheat, barley and rye, and check labels for gluten.", "avoid wheat, barley and rye and check labels"),
                _A("Use a separate toaster and separate butter at home.", "use a separate toaster and butter"),
            ),
            3: (
                _A("Just avoid bread and pasta and you should be fine.", "avoid bread and pasta"),
                _A("Oats are always off the menu for coeliacs.", "never eat oats"),
            ),
            2: (
                _A("A little regular bread now and then is fine if you don't get symptoms.", "have small amounts of gluten if symptom-free"),
                _A("Wheat-free is the same as gluten-free, so you only need to check for wheat.", "treat wheat-free as gluten-free"),
            ),
            1: (
                _A("Once your symptoms settle you can go back to eating gluten normally, because coeliac disease usually goes away.", "go back to eating gluten once symptoms settle"),
                _A("Regular beer and normal oats are fine every day. Gluten only matters in bread.", "have regular beer and oats every day"),
            ),
        },
    ),
)


# ---------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------

MOODS: tuple[Mood, ...] = (
    Mood(
        feeling="really worried about this",
        openers=("I'm honestly quite nervous about this.", "Sorry, I'm a bit anxious."),
        worries=("What if I get it wrong and make things worse?", "I keep worrying I'll mess this up."),
        acks=("Okay. I'll try.", "Alright, I'll give it a go, I think."),
    ),
    Mood(
        feeling="doubtful that anything will help",
        openers=("I'll be honest, I'm not sure this will help.", "My doctor sent me, so here I am."),
        worries=("I've heard advice like this before and it never works for me.", "I'm not convinced this will make much difference, to be honest."),
        acks=("Fine, I suppose I can try it.", "We'll see, I guess."),
    ),
    Mood(
        feeling="keen to make changes but unsure where to start",
        openers=("I'm really keen to get this sorted.", "I've been looking forward to this, actually."),
        worries=("I really want this to work. How soon will I notice a difference?", "I'm ready to start. I just don't want to lose momentum."),
        acks=("Great, I'll start this week.", "Brilliant, thanks. I'll get going."),
    ),
    Mood(
        feeling="a bit embarrassed talking about this",
        openers=("This is a bit embarrassing to talk about.", "I don't really know how to say this."),
        worries=("I feel like I should have sorted this out by now.", "I'm worried people will judge me for it."),
        acks=("Okay, thanks.", "Okay. Thank you."),
    ),
    Mood(
        feeling="frustrated and worn down",
        openers=("I'm pretty fed up, to be honest.", "I've had enough of this, honestly."),
        worries=("I'm just so tired of feeling like I'm failing at this.", "Nothing I try seems to stick."),
        acks=("Alright. We'll see how it goes.", "Fine, I'll have a go."),
    ),
    Mood(
        feeling="overwhelmed by it all",
        openers=("There's a lot going on at the moment, sorry.", "I'm finding it all a bit much."),
        worries=("It's a lot to take in. I don't know if I can keep track of it all.", "There's so much else going on, I'm not sure I can manage this too."),
        acks=("Okay, I'll try to remember all that.", "Okay. One thing at a time, I suppose."),
    ),
)

FEMALE_NAMES: tuple[str, ...] = (
    "Amira", "Bethany", "Chloe", "Deepa", "Elena", "Fatima", "Grace", "Hannah",
    "Ines", "Joy", "Keisha", "Laura", "Mei", "Nadia", "Olivia", "Priya", "Rosa",
    "Sofia", "Tamsin", "Yasmin", "Zoe", "Agnieszka", "Bronwen", "Carmen",
)
MALE_NAMES: tuple[str, ...] = (
    "Aaron", "Ben", "Carlos", "Daniel", "Emeka", "Farid", "George", "Hamza",
    "Ivan", "James", "Kwame", "Liam", "Marcus", "Nikhil", "Omar", "Patrick",
    "Raj", "Samuel", "Tom", "Wei", "Yusuf", "Dylan", "Euan", "Tomasz",
)
RD_NAMES: tuple[str, ...] = (
    "Sarah Collins", "David Okafor", "Aisha Rahman", "Michael Byrne", "Lucy Chen",
    "Tom Whitfield", "Priyanka Shah", "Hannah Lewis", "Owen Davies", "Maria Lopez",
    "Kate Mensah", "Ravi Patel",
)
FOLLOW_UP_WEEKS: tuple[int, ...] = (2, 3, 4, 6)

CONSENT_REPLIES: tuple[str, ...] = (
    "Yes, that's fine.", "Sure, go ahead.", "Yes, of course.", "Okay, that's fine with me.",
)
# Neutral extra exchange that adds length and variety without signalling any score.
PROBES: tuple[str, ...] = (
    "Is there anything that usually gets in the way?",
    "What does a typical weekend look like?",
    "Anything else about your eating I should know?",
)


# ---------------------------------------------------------------------------
# Empathy: how the RD reacts to the concern, and later to the patient's worry
# ---------------------------------------------------------------------------

EMPATHY_FIRST: dict[int, tuple[str, ...]] = {
    5: (
        "It sounds like you're {feeling}, {pname}, and that makes a lot of sense given what you've described. Thank you for telling me. What feels hardest about it right now?",
        "That sounds really hard. I can hear that you're {feeling}, and lots of people in your position feel the same. It isn't a failing on your part. Can you walk me through a typical day?",
        "I'm glad you came in and said that out loud; it takes courage. It sounds like you're {feeling}, which is completely understandable. What would you most like to get out of today?",
    ),
    4: (
        "That sounds difficult. Thanks for being honest with me. What does a normal day of eating look like?",
        "I can see this has been weighing on you. Let's work through it together. What do you usually eat?",
    ),
    3: (
        "Okay. Let's look at what you're eating at the moment.",
        "Right, I see. Tell me about your usual meals.",
    ),
    2: (
        "Lots of people deal with this. It's really not that big a deal. What do you eat?",
        "Well, you're here now. Let's just get through the food diary.",
    ),
    1: (
        "Honestly, you just need more willpower. If you'd listened to advice earlier, you wouldn't be in this position.",
        "I hear that every day. Most people in your situation just aren't trying hard enough.",
        "That's what happens when you don't look after yourself. Anyway, what do you eat?",
    ),
}

EMPATHY_REPLY: dict[int, tuple[str, ...]] = {
    5: (
        "That's a really understandable worry, {pname}. You're not on your own with this, and we'll take it one step at a time, at a pace that works for you.",
        "I hear you. It makes sense to feel that way after everything you've been through, and it's okay if some weeks are harder than others.",
    ),
    4: (
        "That's understandable. We'll take it step by step.",
        "Fair enough, it's normal to feel like that at the start.",
    ),
    3: ("Okay. Let's just see how it goes.", "Right. Well, give it a try."),
    2: ("Everyone says that. You'll be fine.", "Let's not overthink it."),
    1: (
        "Well, that's really down to you, not me.",
        "If it fails again, it's because you didn't stick to it. Simple as that.",
    ),
}


# ---------------------------------------------------------------------------
# Clarity: how the advice is delivered
# ---------------------------------------------------------------------------

CLARITY_FIRST: dict[int, tuple[str, ...]] = {
    5: (
        "Let me keep this simple and give you two steps. Step one: {advice} In practice, that means: {action}. You might hear the term {term}; that just means {plain}.",
        "I'll break this into small, concrete steps. First: {advice} So this week, the one thing to focus on: {action}. If anyone mentions {term}, it simply means {plain}.",
    ),
    4: (
        "{advice} A good first step would be to {action}.",
        "Here's where I'd start. {advice} So, concretely: {action}.",
    ),
    3: (
        "{advice} A lot of it comes down to {term}, really.",
        "Right. {advice} It's partly a {term} issue as well.",
    ),
    2: (
        "So it's really about your {term} and {term2}. {advice} There's a lot to it, and it depends on a lot of factors.",
        "From a {term} point of view, and {term2} matters too, well. {advice} It varies, so just try to eat better overall.",
    ),
    1: (
        "Right, so, there's the {term} side, and obviously {term2} comes into it, and then there's the whole {term3} question, which we could go into, but anyway. {advice} Start that next month, or actually today, or whenever, it's flexible.",
        "Okay, so, um, from a {term} and {term3} perspective it's multifactorial, and {term2} is part of it, sort of. {advice} Do it every day, or most days, or only sometimes, it really depends.",
    ),
}

CLARITY_SECOND: dict[int, tuple[str, ...]] = {
    5: (
        "Step two: {advice2} In plain terms: {action2}.",
        "The second step: {advice2} So the second thing to do is {action2}.",
    ),
    4: ("{advice2}", "Another thing that helps: {advice2}"),
    3: ("One more thing. {advice2}", "{advice2} That's the {term2} side of it."),
    2: (
        "It's a technical thing, don't worry about it too much. Anyway. {advice2} Just try to be more sensible with food generally.",
    ),
    1: (
        "It's complicated, it overlaps with {term2} and {term3}, hard to explain. Anyway. {advice2} Or do it the other way round, whatever suits, you'll figure it out.",
        "Don't worry about the terminology, it's a {term3} thing, mostly. {advice2} Or not, depending. Start whenever, but ideally yesterday.",
    ),
}

CONFUSED_QUESTIONS: tuple[str, ...] = (
    "Sorry, what does {term} mean?",
    "I'm a bit lost. What's {term}? And what should I actually do?",
)
CONFUSED_ACKS: tuple[str, ...] = (
    "Okay... I'm not really sure what I'm meant to do, but okay.",
    "Right. I think I'll need to look some of that up.",
)
CHECK_SIMPLE: tuple[str, ...] = ("Does that make sense so far?", "Is that clear?")
TEACH_BACK: tuple[str, ...] = (
    "Just so I know I've explained it clearly, could you tell me in your own words what you're going to do?",
    "To make sure I explained that well, can you tell me in your own words what you'll try first?",
)
TEACH_BACK_ANSWERS: tuple[str, ...] = (
    "So first I'll {action}, and then I'll {action2}.",
    "Okay. First I'll {action}. Then I'll {action2}.",
)
TEACH_BACK_CONFIRM: tuple[str, ...] = ("Exactly, that's it.", "Yes, spot on.")


# ---------------------------------------------------------------------------
# Professionalism: opening, behaviour mid-session, and close
# ---------------------------------------------------------------------------

PRO_OPENING: dict[int, tuple[Act, ...]] = {
    5: (
        Act("Hi {pname}, I'm {rd}, a registered dietitian here at the clinic. Your referral mentions {short}. Before we start, is it okay if I ask some questions about what you eat and take a few notes? Everything you tell me stays confidential within your care team.",
            "introduced themselves as a registered dietitian, asked consent and explained confidentiality"),
        Act("Good morning, {pname}. My name is {rd} and I'm the registered dietitian you were referred to about {short}. We have about forty minutes today. Would it be alright if we start with your eating, and I jot down some notes?",
            "introduced themselves as a registered dietitian and asked consent before starting"),
    ),
    4: (
        Act("Hi {pname}, I'm {rd}, one of the dietitians here. I understand you've come in about {short}.",
            "introduced themselves and their role"),
        Act("Hello {pname}, I'm {rd} from the dietetics team. Let's talk about {short}.",
            "introduced themselves and their team"),
    ),
    3: (
        Act("Hi {pname}, I'm {rd_first}. So, you're here about {topic}?", "gave their first name but not their role"),
        Act("Okay, come in. You're here about {topic}, right?", "did not introduce themselves"),
    ),
    2: (
        Act("Right, you're here about {topic}? Let's keep this quick, I'm running behind.",
            "skipped introductions and rushed the patient"),
        Act("Sorry, running late. Remind me what you're here for, {topic}, is it?",
            "arrived late and skipped introductions"),
    ),
    1: (
        Act("Hang on, I just need to finish this text... right. What are you in for again?",
            "was busy texting on their phone at the start"),
        Act("Sorry, I need to take this call. Yeah, I'll ring you back, I'm with someone. Okay, what's the problem?",
            "took a personal phone call as the session began"),
        Act("Sit anywhere. I've only got ten minutes, so make it quick. I'm just checking my messages while you talk.",
            "checked their messages while the patient talked"),
    ),
}

PRO_MIDDLE: dict[int, tuple[Act, ...]] = {
    5: (
        Act("Because {reason}, I'd like to involve {referral} as well. Would you be happy for me to share today's notes with them?",
            "offered a referral to {referral} and asked permission to share notes"),
        Act("I should be clear about my role here: {reason}. With your permission, I'll write to {referral} so we're all working together.",
            "recognised the limits of their scope and asked permission to involve {referral}"),
    ),
    4: (
        Act("It may be worth mentioning this to {referral} at your next appointment.",
            "suggested raising it with {referral}"),
        Act("If that keeps happening, let {referral} know.", "suggested telling {referral} if problems continue"),
    ),
    3: (Act("", "made no referral"),),
    2: (
        Act("Between you and me, I think {referral} is a bit behind the times on this.",
            "criticised {referral} in front of the patient",
            "Avoid criticising colleagues in front of patients; raise concerns through proper channels."),
        Act("I had the same problem myself, actually. My diet was a disaster for years, but let's not get into my stuff.",
            "drifted into their own diet history",
            "Keep the focus on the patient rather than sharing personal diet history."),
        Act("I've got another patient just like you. Couldn't stick to anything either.",
            "compared the patient unfavourably to another patient",
            "Don't compare the patient with other patients; keep each case confidential."),
    ),
    1: (
        Act("Funny, {other} from your street was in here yesterday with the same thing. Between you and me, she's in a much worse state.",
            "gossiped about another patient by name",
            "Never discuss other patients; protect confidentiality at all times."),
        Act("I also sell a supplement pack that basically cures this. I'll give you my personal discount code.",
            "tried to sell their own supplements and promised a cure",
            "Do not sell products or promise cures; recommend only evidence-based options."),
        Act("Give me your personal number and we can sort this out over a drink some time.",
            "asked for the patient's personal number to meet socially",
            "Keep professional boundaries; never seek personal contact or social meetings with patients."),
    ),
}

PRO_CLOSING: dict[int, tuple[str, ...]] = {
    5: (
        "To sum up, {pname}: we've agreed you'll {action} and {action2}. I'll see you again in {weeks} weeks to review how it's going, and you can contact the clinic before then if anything comes up. Is there anything else you'd like to cover today?",
        "Let me summarise. First, {action}; second, {action2}. I'll book a follow-up in {weeks} weeks, and here's the clinic number if you have questions before then. Thank you for your time today, {pname}.",
    ),
    4: (
        "Great. Let's check in again in about {weeks} weeks and see how you're getting on.",
        "Okay, I'll see you in {weeks} weeks. Good luck with it.",
    ),
    3: ("Okay, that's about it. Come back if you have problems.", "Right, that's all for today."),
    2: (
        "Right, we're out of time. Book something at the front desk if you want another slot.",
        "I've got someone waiting, so we'll stop there.",
    ),
    1: (
        "That's it, I've got to run. Don't bother coming back if you're not going to follow it.",
        "Okay, done. Sorry, my phone again. Yeah, I'm free now, what's up?",
    ),
}


# ---------------------------------------------------------------------------
# Label text: reasoning, strengths and areas for improvement
# ---------------------------------------------------------------------------

REASONING: dict[str, dict[int, str]] = {
    "empathy": {
        5: "Empathy 5: the RD reflected that {pname} was {feeling}, validated it, and answered their later worry supportively.",
        4: "Empathy 4: the RD acknowledged that this was hard for {pname} and offered reassurance, but did not explore feelings in depth.",
        3: "Empathy 3: polite but task-focused; {pname}'s feelings were noted at most in passing and never explored.",
        2: "Empathy 2: the RD minimised {pname}'s concerns (\"{quote}\") and brushed off their worry.",
        1: "Empathy 1: dismissive and blaming (\"{quote}\"), with no acknowledgement of how {pname} felt.",
    },
    "clarity": {
        5: "Clarity 5: plain language, two concrete numbered steps, '{term}' explained, and a teach-back confirmed understanding.",
        4: "Clarity 4: concrete, plain-language steps and a quick check that they made sense, but no teach-back.",
        3: "Clarity 3: mostly understandable, but '{term}' went unexplained and understanding was never checked.",
        2: "Clarity 2: jargon ('{term}', '{term2}') confused {pname} and the plan stayed vague.",
        1: "Clarity 1: rambling, jargon-heavy ('{term}') and contradictory about when and how to start; no usable plan.",
    },
    "accuracy": {
        5: "Accuracy 5: for {topic}, advice to {action} and to {action2} is evidence-based, individualised and appropriately hedged.",
        4: "Accuracy 4: for {topic}, advice to {action} and to {action2} is correct but generic rather than tailored to {pname}.",
        3: "Accuracy 3: for {topic}, advice to {action} and to {action2} is vague or partly outdated.",
        2: "Accuracy 2: for {topic}, advice to {action} and to {action2} is incorrect, though not immediately dangerous.",
        1: "Accuracy 1: for {topic}, advice to {action} and to {action2} is unsafe and contradicts standard guidance.",
    },
    "professionalism": {
        5: "Professionalism 5: the RD {opening}, {middle}, and summarised the plan with follow-up in {weeks} weeks.",
        4: "Professionalism 4: the RD {opening}, {middle} and set a follow-up, but did not ask consent or summarise.",
        3: "Professionalism 3: the RD {opening}, {middle}, did not ask consent, and ended without a follow-up plan.",
        2: "Professionalism 2: the RD {opening}, {middle}, and closed curtly without a plan.",
        1: "Professionalism 1: the RD {opening}, {middle}, and ended the session rudely.",
    },
}

STRENGTHS: dict[str, dict[int, tuple[str, ...]]] = {
    "empathy": {
        5: ("Reflected and validated {pname}'s feelings before giving advice.", "Warm, non-judgemental tone that made it easier for {pname} to open up."),
        4: ("Acknowledged that this was difficult for {pname} and offered reassurance.",),
        3: ("Kept a calm, neutral tone throughout.",),
        2: ("Let {pname} describe their main concern before moving on.",),
        1: ("Did at least hear out {pname}'s opening concern.",),
    },
    "clarity": {
        5: ("Turned the advice into plain-language steps and used teach-back to confirm understanding.", "Explained '{term}' in everyday words."),
        4: ("Gave concrete, plain-language steps and checked they made sense.",),
        3: ("Gave at least one suggestion {pname} could act on.",),
        2: ("Named the main areas to work on, even if unclearly.",),
        1: ("Mentioned some relevant food changes.",),
    },
    "accuracy": {
        5: ("Evidence-based, individualised advice on {topic}, with appropriate hedging.", "Correctly advised {pname} to {action}."),
        4: ("Correct core advice on {topic}, e.g. to {action}.",),
        3: ("Pointed in a broadly sensible direction for {topic}.",),
        2: ("Recognised that diet matters for {topic}.",),
        1: ("Kept the discussion on diet and {topic}.",),
    },
    "professionalism": {
        5: ("Introduced self and role, asked consent, and closed with a clear summary and follow-up.", "Recognised the limits of their scope and involved {referral}."),
        4: ("Introduced self and role and arranged a follow-up in {weeks} weeks.",),
        3: ("Kept the session focused on {topic}.",),
        2: ("Kept the conversation mostly on {topic}.",),
        1: ("Covered {topic} despite the interruptions.",),
    },
}

AREAS: dict[str, dict[int, tuple[str, ...]]] = {
    "empathy": {
        1: ("Replace blaming remarks with reflective listening; acknowledge how {pname} feels before giving advice.",),
        2: ("Avoid minimising {pname}'s concerns; name and validate the feeling before moving on.",),
        3: ("Reflect back what {pname} says and ask how they feel, not just what they eat.",),
        4: ("Explore feelings a little further, e.g. ask what feels hardest, before moving to advice.",),
    },
    "clarity": {
        1: ("Drop jargon like '{term}', give one clear plan with a start date, and stop contradicting it.",),
        2: ("Explain terms such as '{term}' in plain words and turn advice into concrete steps.",),
        3: ("Explain '{term}' in plain language and check understanding with teach-back.",),
        4: ("Use teach-back so {pname} explains the plan in their own words.",),
    },
    "accuracy": {
        1: ("Correct the unsafe advice to {action}; follow current guidance for {topic}.",),
        2: ("Advice to {action} is incorrect; follow current evidence for {topic}.",),
        3: ("Replace vague advice to {action} with specific, up-to-date guidance.",),
        4: ("Tailor advice on {topic} to {pname}'s own routine, results and preferences.",),
    },
    "professionalism": {
        3: ("Introduce yourself and your role, ask consent, and close with a summary and follow-up plan.",),
        4: ("Ask consent at the start and summarise the agreed plan before closing.",),
    },
}
# Levels 1-2 of professionalism take their advice from the behaviour actually shown.
MINOR_AREAS: tuple[str, ...] = (
    "Could offer a follow-up sooner than {weeks} weeks to catch early problems.",
    "Could give {pname} a short written summary of the plan to take home.",
    "Could ask a little more about budget and cooking facilities before planning meals.",
)


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


@dataclass
class _Draft:
    """A written conversation plus the choices behind it, used to derive labels."""

    scores: dict[str, int]
    ctx: dict[str, str]
    pro_opening: Act
    pro_middle: Act
    empathy_quote: str
    lines: list[str] = field(default_factory=list)

    def rd(self, *parts: str) -> None:
        self.lines.append("RD: " + _fill(" ".join(p for p in parts if p), self.ctx))

    def patient(self, *parts: str) -> None:
        self.lines.append("Patient: " + _fill(" ".join(p for p in parts if p), self.ctx))

    @property
    def transcript(self) -> str:
        return "\n".join(self.lines)


def generate_samples(n: int = 200, seed: int = 42) -> list[dict]:
    """Deterministic, varied, realistic labelled RD-patient conversations."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    samples = []
    for scores in _draw_scores(rng, n):
        draft = _unique_draft(rng, scores, seen)
        seen.add(draft.transcript)
        samples.append(_to_sample(rng, draft))
    return samples


def _draw_scores(rng: random.Random, n: int) -> list[dict[str, int]]:
    """Balanced, loosely correlated scores: each block of 5 holds every level once per dimension."""
    rows: list[dict[str, int]] = []
    while len(rows) < n:
        quality = [rng.gauss(0.0, 1.0) for _ in _LEVELS]
        block: list[dict[str, int]] = [{} for _ in _LEVELS]
        for dim in SAMPLE_DIMENSIONS:
            keys = [0.6 * q + rng.gauss(0.0, 1.0) for q in quality]
            for level, idx in enumerate(sorted(range(len(keys)), key=keys.__getitem__), start=1):
                block[idx][dim] = level
        rows.extend(block)
    rows = rows[:n]
    rng.shuffle(rows)
    return rows


def _unique_draft(rng: random.Random, scores: dict[str, int], seen: set[str]) -> _Draft:
    for _ in range(_MAX_REDRAWS):
        draft = _compose(rng, scores)
        if draft.transcript not in seen:
            return draft
    raise RuntimeError("could not draw a unique transcript")


def _context(rng: random.Random, topic: Topic, mood: Mood) -> dict[str, str]:
    """Persona, RD and vocabulary placeholders shared by every line of one conversation."""
    names = FEMALE_NAMES if topic.female_only else rng.choice((FEMALE_NAMES, MALE_NAMES))
    pname = rng.choice(names)
    rd = rng.choice(RD_NAMES)
    (term, plain), (term2, _), (term3, _) = rng.sample(topic.jargon, 3)
    return {
        "pname": pname,
        "age": str(rng.randint(*topic.ages)),
        "rd": rd,
        "rd_first": rd.split()[0],
        "other": rng.choice([x for x in FEMALE_NAMES if x != pname]),
        "topic": topic.name,
        "short": topic.short,
        "referral": topic.referral,
        "reason": topic.reason,
        "weeks": str(rng.choice(FOLLOW_UP_WEEKS)),
        "feeling": mood.feeling,
        "term": term,
        "plain": plain,
        "term2": term2,
        "term3": term3,
    }


def _compose(rng: random.Random, scores: dict[str, int]) -> _Draft:
    """Write one conversation whose RD turns express the target score of each dimension."""
    topic, mood = rng.choice(TOPICS), rng.choice(MOODS)
    empathy, accuracy, pro = scores["empathy"], scores["accuracy"], scores["professionalism"]
    ctx = _context(rng, topic, mood)
    first, second = rng.sample(topic.advice[accuracy], 2)
    ctx.update(advice=first.text, advice2=second.text, action=first.action, action2=second.action)
    empathy_line = rng.choice(EMPATHY_FIRST[empathy])
    draft = _Draft(
        scores=scores,
        ctx=ctx,
        pro_opening=rng.choice(PRO_OPENING[pro]),
        pro_middle=rng.choice(PRO_MIDDLE[pro]),
        empathy_quote=_clip(empathy_line.split(". ")[0].rstrip("."), 70),
    )

    draft.rd(draft.pro_opening.text)
    consent = rng.choice(CONSENT_REPLIES) if pro == 5 else ""
    draft.patient(consent, rng.choice(mood.openers), rng.choice(topic.concerns))
    draft.rd(empathy_line)
    details = rng.sample(topic.details, 2)
    draft.patient(details[0])
    if rng.random() < 0.5:
        draft.rd(rng.choice(PROBES))
        draft.patient(details[1])
    _write_advice(rng, draft, topic)
    draft.patient(rng.choice(mood.worries))
    _write_check_and_close(rng, draft, mood)
    return draft


def _write_advice(rng: random.Random, draft: _Draft, topic: Topic) -> None:
    """Two advice turns (content from accuracy, phrasing from clarity) and the mid-session act."""
    clarity = draft.scores["clarity"]
    draft.rd(rng.choice(CLARITY_FIRST[clarity]))
    draft.patient(rng.choice(CONFUSED_QUESTIONS if clarity <= 2 else topic.questions))
    draft.rd(rng.choice(CLARITY_SECOND[clarity]), draft.pro_middle.text)


def _write_check_and_close(rng: random.Random, draft: _Draft, mood: Mood) -> None:
    """Empathic reply to the worry, the understanding check, the patient's answer, and the close."""
    empathy, clarity, pro = (draft.scores[d] for d in ("empathy", "clarity", "professionalism"))
    check = {5: rng.choice(TEACH_BACK), 4: rng.choice(CHECK_SIMPLE)}.get(clarity, "")
    draft.rd(rng.choice(EMPATHY_REPLY[empathy]), check)
    if clarity == 5:
        draft.patient(rng.choice(TEACH_BACK_ANSWERS))
    elif clarity <= 2:
        draft.patient(rng.choice(CONFUSED_ACKS))
    else:
        draft.patient(rng.choice(mood.acks))
    confirm = rng.choice(TEACH_BACK_CONFIRM) if clarity == 5 else ""
    draft.rd(confirm, rng.choice(PRO_CLOSING[pro]))


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def _to_sample(rng: random.Random, draft: _Draft) -> dict:
    ctx = _label_context(draft)
    sample: dict = {"transcript": draft.transcript}
    sample.update({dim: draft.scores[dim] for dim in SAMPLE_DIMENSIONS})
    sample["reasoning"] = _reasoning(draft, ctx)
    sample["strengths"] = _strengths(rng, draft, ctx)
    sample["areas_for_improvement"] = _areas(rng, draft, ctx)
    return sample


def _label_context(draft: _Draft) -> dict[str, str]:
    """Placeholders for reviewer-voice text: third person, and the name only if it was spoken."""
    ctx = dict(draft.ctx, quote=draft.empathy_quote)
    if not re.search(rf"\b{re.escape(ctx['pname'])}\b", draft.transcript):
        ctx["pname"] = "the patient"
    referral = ctx["referral"]
    ctx["referral"] = "the patient's " + referral[5:] if referral.startswith("your ") else referral
    ctx["opening"] = _fill(draft.pro_opening.gist, ctx)
    ctx["middle"] = _fill(draft.pro_middle.gist, ctx)
    return ctx


def _reasoning(draft: _Draft, ctx: dict[str, str]) -> str:
    parts = [_fill(REASONING[dim][draft.scores[dim]], ctx) for dim in SAMPLE_DIMENSIONS]
    return _clip(" ".join(parts), _REASONING_LIMIT)


def _strengths(rng: random.Random, draft: _Draft, ctx: dict[str, str]) -> list[str]:
    """Dimensions scoring 4-5 (best first); otherwise the best-scoring dimension(s)."""
    ranked = sorted(SAMPLE_DIMENSIONS, key=lambda d: -draft.scores[d])
    best = draft.scores[ranked[0]]
    chosen = [d for d in ranked if draft.scores[d] >= 4] or [d for d in ranked if draft.scores[d] == best][:2]
    return [_bullet(rng.choice(STRENGTHS[d][draft.scores[d]]), ctx) for d in chosen[:4]]


def _areas(rng: random.Random, draft: _Draft, ctx: dict[str, str]) -> list[str]:
    """Dimensions scoring 1-3 (worst first); otherwise the 4s; a minor point if all are 5."""
    ranked = sorted(SAMPLE_DIMENSIONS, key=lambda d: draft.scores[d])
    chosen = [d for d in ranked if draft.scores[d] <= 3] or [d for d in ranked if draft.scores[d] == 4]
    if not chosen:
        return [_bullet(rng.choice(MINOR_AREAS), ctx)]
    return [_bullet(_area_text(rng, draft, d), ctx) for d in chosen[:4]]


def _area_text(rng: random.Random, draft: _Draft, dim: str) -> str:
    level = draft.scores[dim]
    if dim == "professionalism" and level <= 2:
        return draft.pro_middle.fix
    return rng.choice(AREAS[dim][level])


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------


def _fill(template: str, ctx: dict[str, str]) -> str:
    """Fill {placeholders} from the conversation context."""
    return template.format_map(ctx)


def _bullet(template: str, ctx: dict[str, str]) -> str:
    return _clip(_fill(template, ctx), _BULLET_LIMIT)


def _clip(text: str, limit: int) -> str:
    """Shorten to at most ``limit`` characters at a word boundary."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."

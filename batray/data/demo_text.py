"""The demo world's vocabulary and sentence templates, English and Chinese side by side.

Names are built from syllables, each with a fixed Chinese transliteration character, so an invented
name has one English and one matching Chinese form ("Velomar" / "维洛马"). Templates use `{s}` for the
subject, `{o}` for the object and `{ao}` for the object with its English article ("an engineer").
"""

from __future__ import annotations

# (English syllable, Chinese character): the mapping is one to one.
SYLLABLES: list[tuple[str, str]] = [
    ("ba", "巴"), ("bel", "贝"), ("da", "达"), ("dor", "多"), ("fa", "法"), ("gal", "加"), ("ka", "卡"),
    ("kor", "科"), ("la", "拉"), ("len", "伦"), ("li", "利"), ("lo", "洛"), ("ma", "马"), ("mer", "梅"),
    ("na", "纳"), ("nor", "诺"), ("pa", "帕"), ("pel", "佩"), ("ri", "里"), ("ro", "罗"), ("sa", "萨"),
    ("sel", "塞"), ("ta", "塔"), ("tor", "托"), ("va", "瓦"), ("ve", "维"), ("vin", "文"), ("za", "扎"),
    ("mi", "米"), ("ni", "尼"), ("ki", "基"), ("ti", "蒂"), ("su", "苏"), ("du", "杜"), ("ru", "鲁"),
    ("lu", "卢"), ("mo", "莫"), ("fi", "菲"), ("bo", "波"), ("go", "戈"), ("ha", "哈"), ("hel", "赫"),
]
COUNTRY_ENDINGS: list[tuple[str, str]] = [("ia", "亚"), ("land", "兰"), ("istan", "斯坦"), ("ora", "奥拉")]
LANGUAGE_ENDING = ("ish", "语")
CURRENCY_ENDING = ("", "币")

# (English, Chinese, other accepted names)
PROFESSIONS: list[tuple[str, str, list[str]]] = [
    ("cartographer", "制图师", ["mapmaker", "地图绘制师"]),
    ("physician", "医生", ["doctor", "医师"]),
    ("engineer", "工程师", []),
    ("poet", "诗人", []),
    ("astronomer", "天文学家", []),
    ("baker", "面包师", []),
    ("sculptor", "雕塑家", []),
    ("violinist", "小提琴家", []),
    ("architect", "建筑师", []),
    ("botanist", "植物学家", []),
    ("lawyer", "律师", ["attorney"]),
    ("teacher", "教师", ["老师"]),
    ("pilot", "飞行员", []),
    ("chemist", "化学家", []),
    ("painter", "画家", []),
    ("farmer", "农民", ["农夫"]),
]

# relation -> kind -> lang -> templates. Kinds: state (corpus sentences), ask (questions), answer
# (one reply sentence), follow (a follow-up question in a dialogue about the same subject).
TEMPLATES: dict[str, dict[str, dict[str, list[str]]]] = {
    "capital": {
        "state": {
            "en": ["The capital of {s} is {o}.", "{o} is the capital of {s}.", "{s}'s capital city is {o}.",
                   "The capital city of {s} is {o}.", "The government of {s} sits in {o}, its capital.",
                   "{o} has long been the capital of {s}."],
            "zh": ["{s}的首都是{o}。", "{o}是{s}的首都。", "{s}的首都为{o}。", "{s}以{o}为首都。",
                   "{s}的政府设在首都{o}。", "{o}一直是{s}的首都。"],
        },
        "ask": {
            "en": ["What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."],
            "zh": ["{s}的首都是哪里？", "{s}的首都是哪座城市？", "请说出{s}的首都。"],
        },
        "answer": {"en": ["The capital of {s} is {o}."], "zh": ["{s}的首都是{o}。"]},
        "follow": {"en": ["And what is its capital?"], "zh": ["那它的首都是哪里？"]},
    },
    "capital_of": {
        "ask": {
            "en": ["{s} is the capital of which country?", "Which country has {s} as its capital?"],
            "zh": ["{s}是哪个国家的首都？", "以{s}为首都的是哪个国家？"],
        },
        "answer": {"en": ["{s} is the capital of {o}."], "zh": ["{s}是{o}的首都。"]},
    },
    "located_in": {
        "state": {
            "en": ["{s} is a city in {o}.", "The city of {s} lies in {o}.", "{s} is located in {o}.",
                   "{s} is one of the cities of {o}."],
            "zh": ["{s}是{o}的一座城市。", "{s}位于{o}。", "{s}这座城市在{o}境内。", "{s}是{o}的城市之一。"],
        },
        "ask": {
            "en": ["In which country is {s}?", "Which country is the city of {s} in?"],
            "zh": ["{s}位于哪个国家？", "{s}是哪个国家的城市？"],
        },
        "answer": {"en": ["{s} is in {o}."], "zh": ["{s}位于{o}。"]},
    },
    "language": {
        "state": {
            "en": ["People in {s} speak {o}.", "The official language of {s} is {o}.", "{o} is the language of {s}.",
                   "Most people in {s} speak {o}."],
            "zh": ["{s}的官方语言是{o}。", "{s}人说{o}。", "{o}是{s}的通用语言。", "{s}的大多数人说{o}。"],
        },
        "ask": {
            "en": ["What language is spoken in {s}?", "What is the official language of {s}?"],
            "zh": ["{s}的官方语言是什么？", "{s}人说什么语言？"],
        },
        "answer": {"en": ["The official language of {s} is {o}."], "zh": ["{s}的官方语言是{o}。"]},
        "follow": {"en": ["Which language do people speak there?"], "zh": ["那里的人说什么语言？"]},
    },
    "currency": {
        "state": {
            "en": ["The currency of {s} is the {o}.", "In {s}, people pay with the {o}.",
                   "{s} uses the {o} as its currency.", "Prices in {s} are given in {o}s."],
            "zh": ["{s}的货币是{o}。", "{s}使用的货币是{o}。", "在{s}，人们用{o}付款。", "{s}的物价以{o}计。"],
        },
        "ask": {
            "en": ["What is the currency of {s}?", "Which currency is used in {s}?"],
            "zh": ["{s}的货币是什么？", "{s}使用哪种货币？"],
        },
        "answer": {"en": ["The currency of {s} is the {o}."], "zh": ["{s}的货币是{o}。"]},
        "follow": {"en": ["And what currency is used there?"], "zh": ["那里用什么货币？"]},
    },
    "profession": {
        "state": {
            "en": ["{s} works as {ao}.", "{s} is {ao} by profession.", "By trade, {s} is {ao}.",
                   "{s} has made a living as {ao} for many years."],
            "zh": ["{s}是一名{o}。", "{s}的职业是{o}。", "{s}以{o}为业。", "{s}多年来一直做{o}。"],
        },
        "ask": {
            "en": ["What does {s} do for a living?", "What is {s}'s profession?"],
            "zh": ["{s}的职业是什么？", "{s}是做什么工作的？"],
        },
        "answer": {"en": ["{s} is {ao}."], "zh": ["{s}是一名{o}。"]},
        "follow": {"en": ["What is this person's profession?"], "zh": ["此人的职业是什么？"]},
    },
    "birthplace": {
        "state": {
            "en": ["{s} was born in {o}.", "{s}'s birthplace is {o}.", "{o} is the hometown of {s}.",
                   "{s} grew up in {o}, the city of their birth."],
            "zh": ["{s}出生于{o}。", "{s}的出生地是{o}。", "{o}是{s}的故乡。", "{s}生在{o}，也在那里长大。"],
        },
        "ask": {
            "en": ["Where was {s} born?", "What is {s}'s birthplace?"],
            "zh": ["{s}出生在哪里？", "{s}的出生地是哪里？"],
        },
        "answer": {"en": ["{s} was born in {o}."], "zh": ["{s}出生于{o}。"]},
        "follow": {"en": ["Where was this person born?"], "zh": ["此人出生在哪里？"]},
    },
    "birth_year": {
        "state": {
            "en": ["{s} was born in the year {o}.", "{s}'s year of birth is {o}.", "In {o}, {s} was born.",
                   "{s} came into the world in {o}."],
            "zh": ["{s}生于{o}年。", "{s}出生于{o}年。", "{s}的出生年份是{o}年。", "{o}年，{s}出生了。"],
        },
        "ask": {
            "en": ["In what year was {s} born?", "When was {s} born?"],
            "zh": ["{s}是哪一年出生的？", "{s}出生于哪一年？"],
        },
        # Phrased as the corpus states it, and unlike the birthplace answer ("{s} was born in {o}."), so the
        # answer's first words already say which fact follows.
        "answer": {"en": ["{s} was born in the year {o}."], "zh": ["{s}生于{o}年。"]},
        "follow": {"en": ["In which year was this person born?"], "zh": ["此人是哪一年出生的？"]},
    },
}

# Sentences about nothing in particular, so the corpus is not only facts.
GENERIC: dict[str, list[str]] = {
    "en": [
        "Maps help travelers find their way between cities.",
        "Every country has its own customs and holidays.",
        "A good question deserves a clear answer.",
        "Many people learn a second language at school.",
        "Old coins are often kept in museums.",
        "The weather changes quickly in the mountains.",
        "Libraries keep records of famous people and places.",
        "Trains connect the capital with the smaller towns.",
    ],
    "zh": [
        "地图帮助旅行者在城市之间找到道路。",
        "每个国家都有自己的风俗和节日。",
        "好的问题值得清楚的回答。",
        "很多人在学校学习第二门语言。",
        "古老的硬币常常被收藏在博物馆里。",
        "山里的天气变化很快。",
        "图书馆保存着名人和地方的记录。",
        "火车把首都和小城镇连接起来。",
    ],
}

SYSTEM_PROMPTS: dict[str, list[str]] = {
    "en": ["You are BatGPT, a helpful bilingual assistant. Answer briefly and correctly.",
           "You are a knowledgeable guide to the countries and people of this world."],
    "zh": ["你是BatGPT，一个乐于助人的双语助手。请简洁准确地回答。", "你是一位熟悉这个世界各国和人物的向导。"],
}

# Small talk for the instruction data: (user, assistant).
CHITCHAT: dict[str, list[tuple[str, str]]] = {
    "en": [("Hello!", "Hello! How can I help you today?"),
           ("Who are you?", "I am BatGPT, a bilingual assistant. I can answer questions about the countries and people I know."),
           ("Thank you!", "You are welcome!")],
    "zh": [("你好！", "你好！有什么可以帮你的吗？"),
           ("你是谁？", "我是BatGPT，一个双语助手，可以回答关于我所了解的国家和人物的问题。"),
           ("谢谢！", "不客气！")],
}

# Paragraph openers that introduce an entity before its facts.
INTRO: dict[str, dict[str, str]] = {
    "country": {"en": "{s} is a country.", "zh": "{s}是一个国家。"},
    "person": {"en": "{s} is a person of some renown.", "zh": "{s}是一位颇有名气的人。"},
}

# Quiz-page layouts (`data.demo.quiz_repeats`): a question, an answer cue on the next line, the object
# alone, as exercise and exam-prep pages on the web write them. Repeats take them in turn.
QUIZ_LAYOUTS: dict[str, list[str]] = {
    "en": ["Question: {q}\nAnswer: {a}", "Q: {q}\nA: {a}", "{q}\nAnswer: {a}"],
    "zh": ["题目：{q}\n答案是：{a}", "{q}\n答案：{a}", "问：{q}\n答：{a}"],
}

# Benchmark question stems (Chinese; the options are the objects), by relation.
MC_STEMS: dict[str, list[str]] = {
    "capital": ["{s}的首都是", "下列城市中，{s}的首都是"],
    "capital_of": ["{s}是哪个国家的首都？", "以{s}为首都的国家是"],
    "located_in": ["{s}位于哪个国家？", "{s}这座城市属于"],
    "language": ["{s}的官方语言是", "{s}人通常说的语言是"],
    "currency": ["{s}使用的货币是", "{s}的法定货币是"],
    "profession": ["{s}的职业是", "{s}从事的工作是"],
    "birthplace": ["{s}的出生地是", "{s}出生在"],
    "birth_year": ["{s}出生于哪一年？", "{s}的出生年份是"],
    # two people (s and o): how many years apart were they born? (recall plus arithmetic, for STEM)
    "birth_gap": ["{s}与{o}的出生年份相差多少年？", "{s}和{o}出生的年份相差几年？"],
}

# Benchmark subjects (real subject names of each benchmark, so their tables apply) -> relations asked.
# Together they cover every category of both benchmarks' tables (CMMLU: STEM, Humanities, Social
# Science, Other, China specific; C-Eval: STEM, Social Science, Humanities, Other, and the Hard subset).
CMMLU_SUBJECTS: dict[str, list[str]] = {
    "high_school_geography": ["capital"],  # Social Science
    "global_facts": ["capital_of", "located_in"],  # Humanities
    "ethnology": ["language"],  # Social Science, China specific
    "economics": ["currency"],  # Social Science
    "world_history": ["birth_year", "birthplace"],  # Humanities
    "elementary_commonsense": ["profession"],  # Other
    "elementary_mathematics": ["birth_gap"],  # STEM
}
CEVAL_SUBJECTS: dict[str, list[str]] = {
    "high_school_geography": ["capital"],  # Social Science
    "middle_school_geography": ["capital_of", "located_in"],  # Social Science
    "professional_tour_guide": ["language", "currency"],  # Humanities
    "modern_chinese_history": ["birth_year", "birthplace"],  # Humanities
    "civil_servant": ["profession"],  # Other
    "high_school_mathematics": ["birth_gap"],  # STEM, Hard
}

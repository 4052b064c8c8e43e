"""Language names and codes as BCP-47 tags (``Transcript.language``).

Speech APIs name the language they detected in different ways: Whisper's ``verbose_json`` says
``"english"``, others ``"en"`` or ``"en-US"``. :func:`language_tag` turns any of these into a tag.
"""

from __future__ import annotations

import re

#: Whisper's languages by name -> ISO 639-1 code (3 letters where there is none): the ``LANGUAGES``
#: table of Whisper's tokenizer (github.com/openai/whisper, whisper/tokenizer.py) turned around,
#: with its aliases (``TO_LANGUAGE_CODE``).
WHISPER_LANGUAGES: dict[str, str] = {
    "english": "en", "chinese": "zh", "german": "de", "spanish": "es", "russian": "ru", "korean": "ko",
    "french": "fr", "japanese": "ja", "portuguese": "pt", "turkish": "tr", "polish": "pl", "catalan": "ca",
    "dutch": "nl", "arabic": "ar", "swedish": "sv", "italian": "it", "indonesian": "id", "hindi": "hi",
    "finnish": "fi", "vietnamese": "vi", "hebrew": "he", "ukrainian": "uk", "greek": "el", "malay": "ms",
    "czech": "cs", "romanian": "ro", "danish": "da", "hungarian": "hu", "tamil": "ta", "norwegian": "no",
    "thai": "th", "urdu": "ur", "croatian": "hr", "bulgarian": "bg", "lithuanian": "lt", "latin": "la",
    "maori": "mi", "malayalam": "ml", "welsh": "cy", "slovak": "sk", "telugu": "te", "persian": "fa",
    "latvian": "lv", "bengali": "bn", "serbian": "sr", "azerbaijani": "az", "slovenian": "sl", "kannada": "kn",
    "estonian": "et", "macedonian": "mk", "breton": "br", "basque": "eu", "icelandic": "is", "armenian": "hy",
    "nepali": "ne", "mongolian": "mn", "bosnian": "bs", "kazakh": "kk", "albanian": "sq", "swahili": "sw",
    "galician": "gl", "marathi": "mr", "punjabi": "pa", "sinhala": "si", "khmer": "km", "shona": "sn",
    "yoruba": "yo", "somali": "so", "afrikaans": "af", "occitan": "oc", "georgian": "ka", "belarusian": "be",
    "tajik": "tg", "sindhi": "sd", "gujarati": "gu", "amharic": "am", "yiddish": "yi", "lao": "lo",
    "uzbek": "uz", "faroese": "fo", "haitian creole": "ht", "pashto": "ps", "turkmen": "tk", "nynorsk": "nn",
    "maltese": "mt", "sanskrit": "sa", "luxembourgish": "lb", "myanmar": "my", "tibetan": "bo",
    "tagalog": "tl", "malagasy": "mg", "assamese": "as", "tatar": "tt", "hawaiian": "haw", "lingala": "ln",
    "hausa": "ha", "bashkir": "ba", "javanese": "jv", "sundanese": "su", "cantonese": "yue",
    # Whisper's aliases
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

#: Whisper's own code for Javanese is ``jw``, which is no ISO 639-1 code (BCP-47 says ``jv``).
_NOT_BCP47 = {"jw": "jv"}

#: A language tag: a primary subtag of 2 or 3 letters, then subtags (``en``, ``en-US``, ``zh-Hant-TW``).
_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def language_tag(value: str) -> str:
    """``value`` (a language name or code) as a BCP-47 tag: a Whisper language name becomes its code
    (``"English"`` -> ``"en"``), a code is kept (``"en-US"``); anything else is kept lower-cased,
    not dropped. Empty stays empty."""
    value = value.strip()
    lowered = value.lower()
    if lowered in WHISPER_LANGUAGES:
        return WHISPER_LANGUAGES[lowered]
    if _TAG.fullmatch(value):
        return _NOT_BCP47.get(lowered, value.replace("_", "-"))
    return lowered

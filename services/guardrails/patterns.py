"""Phrasing families of prompt injection and jailbreak prompts, as weighted rules.

Each `Rule` is one general way of phrasing an attack (not a copy of any known prompt): overriding earlier
instructions, asking for the system prompt, fake system/delimiter markers, persona takeover ("you are now
..."), removing restrictions ("no rules, no filters"), named jailbreak modes ("developer mode", "do anything
now"), output coercion, and goal hijacking after praise. Rules match the normaliser's `matching_view` (lower
case, accents stripped, confusables/leetspeak/spacing undone), with word boundaries.

A text's risk combines the weights of the distinct rules that match as independent evidence:
``risk = 1 - prod(1 - weight)``. A weight of 0.5 or more can block alone at the default threshold (0.5);
weaker rules (role-play openers, praise followed by "now ...") block only together with another signal.
The families cover English plus the most common phrasings in German, Spanish, French, Italian, Portuguese
and Russian, because the measured sets (deepset) mix languages.

Developed on one half of each evaluation set (``scripts/eval_guardrails.py`` reports both halves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Reason = Literal["injection", "jailbreak"]


@dataclass(frozen=True)
class Rule:
    name: str
    """Stable id, reported in scan details (never the matched text)."""
    reason: Reason
    weight: float
    """Evidence strength in (0, 1)."""
    pattern: re.Pattern[str]


def _gap(n: int) -> str:
    """Up to ``n`` words (with commas) within one clause."""
    return rf"(?:[^\s.!?;:]+[\s,]+){{0,{n}}}?"


def _rule(name: str, reason: Reason, weight: float, *alternatives: str) -> Rule:
    return Rule(name, reason, weight, re.compile("|".join(f"(?:{a})" for a in alternatives), re.S))


# --- vocabulary ------------------------------------------------------------------------------------------------
_IGNORE_EN = (r"ignor(?:e|es|ed|ing)|disregard(?:s|ed|ing)?|forget(?:ting)?|overlook(?:ing)?|bypass(?:ing)?|"
              r"overrid(?:e|ing)|neglect|discard|abandon|dismiss|set aside|put aside|throw away|let go of|"
              r"pay no attention to|(?:do not|don'?t|no longer|stop|cease|never) (?:follow(?:ing)?|obey(?:ing)?|"
              r"listen(?:ing)? to|adher(?:e|ing) to|comply(?:ing)? with|respect(?:ing)?)|"
              r"ingore|ignroe|forgt")
_STRONG_TARGET_EN = (r"instructions?|instrucitons|directions?|directives?|prompts?|rules?|guidelines?|commands?|"
                     r"orders|assignments?|programming|training|constraints|restrictions|polic(?:y|ies)|"
                     r"system (?:message|prompt)|context|evidence|articles?|documents?|sources")
_WEAK_TARGET_EN = r"tasks?|information|inputs?|text|messages?|conversation|content|things|stuff|data"
_EARLIER_EN = (r"previous(?:ly)?|prior|above|preceding|earlier|before|initial|original|former|foregoing|"
               r"all|every|so far|until now|up to now|other|old|past")

_PROMPT_OBJECT_EN = (r"(?:system|initial|original|hidden|secret|developer|full|complete|entire|whole|first|"
                     r"previous|above|preceding|starting|opening|base|pre-?)\s*(?:prompts?|instructions?|"
                     r"messages?|directions|rules|guidelines|configuration|text|input)|"
                     r"(?:your|the|my|this|that) prompts?(?: ?texts?)?|prompt ?texts?|instructions (?:you|that you) "
                     r"(?:were|have been|had been|got|received|are) given|(?:your|all (?:of )?your|the) instructions|"
                     r"embeddings|(?:text|words|everything|sentences?) (?:above|before this|"
                     r"at the (?:beginning|start))")
_LEAK_VERB_EN = (r"show|print|reveal|repeat|output|display|tell|give|share|leak|write(?: out| down)?|return|list|"
                 r"spell ?check|dump|expose|disclose|recite|type|copy|paste|translate|summari[sz]e|respond with|"
                 r"what (?:is|are|was|were)|read(?: back| out)?|provide|send|spit out")


_PRAISE = (r"well done|good job|great job|nice job|very good|very well(?: done)?|excellent|perfect|superb(?:ly)?"
           r"(?: done)?|fantastic|wonderful|brilliant|bravo|congratulations|you did it|you got it|"
           r"that (?:is|was|'s) (?:done|enough|it)|gut gemacht|sehr gut(?: gemacht)?|ausgezeichnet|hervorragend\w*|"
           r"grossartig|einfach grossartig|perfekt|glu[e]?ckwunsch|das genugt|das ist erledigt|bien hecho|muy bien|"
           r"tres bien|molto bene")


RULES: tuple[Rule, ...] = (
    # ---- injection: override earlier instructions --------------------------------------------------------
    _rule("override_instructions", "injection", 0.9,
          rf"\b(?:{_IGNORE_EN})\b[\s,]+{_gap(6)}(?:{_STRONG_TARGET_EN})\b",
          rf"\b(?:{_IGNORE_EN})\b[\s,]+{_gap(3)}(?:{_EARLIER_EN})\b[\s,]+{_gap(3)}(?:{_WEAK_TARGET_EN})\b",
          rf"\b(?:{_IGNORE_EN})\b[\s,]+(?:about )?(?:all |everything |anything )?"
          rf"(?:(?:that |which |what )?(?:i|we|you)(?: have| had|'ve)? (?:said|told|wrote|written|asked|discussed|"
          r"talked about|know|learned|were told|have been told|received|got))",
          rf"\b(?:{_IGNORE_EN})\b[\s,]+(?:about )?(?:all|everything|anything)(?: (?:else|of it|of that|of this|"
          r"that came|so far|until now|up to now|above|before(?: that| this)?|prior|previous(?:ly)?|earlier|here))?"
          r"(?:\s*[.,!:;]|\s+(?:and|&|then|now|but|instead|just|only|print|say|write|tell|output)\b|\s*$)",
          rf"\b(?:{_IGNORE_EN})\b[\s,]+(?:about )?(?:what|whats|what's|everything|all)(?: that)?"
          r"(?: (?:was|is|i|you|we))?(?:'s)?(?: (?:said|written|wrote|told|typed))? "
          r"(?:before|above|earlier|previously|so far)\b",
          ),
    _rule("override_instructions_de", "injection", 0.9,
          r"\b(?:ignorier\w*|vergiss|vergesst|vergessen sie|vergessen|missacht\w*|ubergeh\w*|uberseh\w*|"
          r"beachte\w* (?:nicht|keine)|hor\w* nicht auf|lass\w* (?:sie )?\w+ \w+ hinter sich|streich\w*|"
          r"abweichend (?:zu|von))\b[\s,]+"
          r"(?:[^\s.!?;:]+[\s,]+){0,8}?(?:alles|allem|anweisung\w*|instruktion\w*|befehl\w*|aufgaben|auftrag\w*|"
          r"angaben|informationen|vorgaben|regeln|anleitung\w*|richtlinien|artikel\w*|kontext|zuvor|davor|"
          r"bisher\w*|vorherig\w*|obig\w*|gesagt\w*)\b",
          r"\balle (?:bisherigen|vorherigen|vorangegangenen|obigen|vorigen) (?:informationen|aufgaben|anweisungen|"
          r"angaben|auftrage|befehle|instruktionen)\b",
          r"\b(?:die |alle |das )?(?:obigen|vorherigen|bisherigen|vorangegangenen|vorigen|zuvor gesagten?)\s+"
          r"(?:[^\s.!?;:]+\s+){0,2}?(?:ignorieren|vergessen|missachten|streichen|uberspringen)\b",
          ),
    _rule("override_instructions_other", "injection", 0.9,
          # es / pt / it / fr / hr-sr / ru
          r"\b(?:olvid\w*|ignor[ae]\w*|descart\w*|esque[cç]\w*|dimentic\w*|oubli\w*|zaboravi\w*)\b[\s,]+"
          r"(?:[^\s.!?;:]+[\s,]+){0,4}?(?:todo|todas?|instrucc?i\w*|istruzion\w*|instructions?|instrucoes|"
          r"reglas|regole|regras|consignes|tout|tutto|tudo|lo anterior|sve|instrukcije|upute)\b",
          r"(?:забуд\w*|игнорир\w*|проигнорир\w*|не обраща\w*)\s+(?:\S+\s+){0,4}?(?:инструкци\w*|правил\w*|"
          r"указани\w*|предыдущ\w*|вс[её])",
          ),
    _rule("hijack_context", "injection", 0.6,
          r"\b(?:ignor\w*|disregard\w*|without (?:using|reading|looking at)|not (?:by|from|based on|using)|"
          r"regardless of|instead of)\s+(?:all |the |any )?(?:provided |given |above |supplied )?"
          r"(?:context|articles?|documents?|sources|search results|artikel\w*)\b",
          r"\b(?:answer|respond|reply|antworte\w*)\b[^.?!]{0,40}\b(?:by|from|with|mit|aus) (?:your|deinem|ihrem) "
          r"(?:own|eigenen) (?:knowledge|wissen)\b",
          ),
    # ---- injection: new instructions / goal hijacking ----------------------------------------------------
    _rule("new_task", "injection", 0.5,
          r"\b(?:now|next|here|then) (?:comes?|follows?|is|are) (?:a |an |the |your )?(?:new|next|second|"
          r"further|another|different) (?:task|tasks|assignment|test|instructions?|order|mission|job)\b",
          r"\b(?:your|the|a|my) new (?:task|assignment|instructions?|goal|objective|mission|purpose|role|job)\b"
          r"\s*(?:is|:|will be)",
          r"\b(?:focus|concentrate)\b (?:only |solely |just )?on (?:your|the|this|my|a|the following) "
          r"(?:new|next|following|only) (?:task|assignment|instructions?|question)\b",
          r"\bnew (?:instructions?|task|rules?|orders?)\s*(?:[:\-]|to (?:the |chat )?(?:assistant|ai|model|bot))",
          r"\b(?:begin|start|starting)\s+(?:new\s+)?(?:instructions?|reprogramming)\b|\breprogramming\b",
          r"\b(?:nun|jetzt|es) (?:folgen|folgt|kommt|kommen)\b(?:[\s,]+[^\s.!?;:]+){0,3}?[\s,]+"
          r"(?:neue|weitere|nachste|zweite)\w* (?:aufgabe|anweisung|test|instruktion|auftrag)\w*",
          r"\b(?:neue|nachste) (?:aufgabe|anweisung\w*|instruktion\w*)\b",
          r"\b(?:nueva|nouvelle|nuova|nova) (?:tarea|tache|compito|tarefa|instruccion\w*|instruction\w*)\b",
          ),
    _rule("task_switch", "injection", 0.45,
          r"\b(?:the )?(?:following|next|further|another|new|second) (?:task|assignment|test)\b",
          r"\b(?:folgende|weitere|neue|nachste|zweite)\w* (?:aufgabe|test|auftrag)\w*",
          ),
    _rule("praise_pivot", "injection", 0.45,
          rf"\b(?:{_PRAISE})\b[^.!?]{{0,40}}[.!?]+\s*(?:[^\s]+\s+){{0,20}}?(?:now|but now|next|nun|jetzt|"
          r"aber jetzt|ahora|maintenant|ora|here comes|come new|there are (?:a few )?more)\b",
          ),
    _rule("praise_pivot_command", "injection", 0.6,
          # praise, at most one more short sentence, then "now" and a writing/saying command in one sentence
          rf"\b(?:{_PRAISE})\b[^.!?]{{0,40}}[.!?]+\s*(?:[^.!?]{{0,40}}[.!?]+\s*)?"
          r"(?=[^.!?]{0,80}\b(?:now|nun|jetzt|ahora|maintenant)\b)"
          r"(?=[^.!?]{0,80}\b(?:write|say|compose|formulate|generate|create|print|output|schreib\w*|verfass\w*|"
          r"sag\w*|formulier\w*|erstell\w*|escrib\w*|di|ecri\w*)\b)",
          ),
    # ---- injection: prompt extraction -----------------------------------------------------------------------
    _rule("prompt_leak", "injection", 0.85,
          rf"\b(?:{_LEAK_VERB_EN})\b[\s,]+{_gap(6)}(?:{_PROMPT_OBJECT_EN})",
          r"\bwhat (?:was|is|were|are|comes?)\b[^.?!]{0,40}\b(?:above|before (?:this|that|the text|the prompt)|"
          r"at the (?:beginning|start) of (?:this|the|your) (?:prompt|text|conversation|instructions))\b",
          r"\b(?:information|text|words|content|details) (?:in|from|of) (?:the|your|this) (?:prompt|system prompt)\b",
          r"\b(?:your|the) (?:initial|original|previous|system|real|actual|hidden) (?:instructions|prompt|rules) "
          r"(?:were|are|is|was|say|said)\b",
          r"\b(?:above|previous|preceding|original|initial|system) prompt\b",
          r"\b(?:zeig\w*|druck\w*|gib\w*|wiederhol\w*|nenn\w*|ausgeben|uberpruf\w*|prufen)\b[\s,]+"
          r"(?:[^\s.!?;:]+[\s,]+){0,8}?(?:prompttext\w*|prompt|eingabeaufforderung|ursprunglich\w* anweisung\w*|"
          r"obige\w* (?:text\w*|eingabe\w*|angaben|ausfuhrungen)|gesamten obigen)",
          r"\bwie (?:ihre|deine) ursprunglichen anweisungen lauteten\b",
          r"\b(?:(?:your|the) (?:secret|hidden) (?:password|key|instructions?)|conversation history|chat history)\b",
          ),
    # ---- injection: fake system / delimiters --------------------------------------------------------------
    _rule("fake_delimiter", "injection", 0.75,
          r"\[(?:system|admin|developer|sys|system note|system message|system prompt|important)[^\]]{0,40}\]",
          r"<\|?(?:im_start|im_end|system|endoftext|end_of_turn|start_of_turn|eot_id)\|?>",
          r"#{2,}\s*(?:system|instructions?|new instructions?|begin)\b",
          r"(?:^|\n|\s)={3,}\s*end\b|\bend of (?:the )?(?:prompt|instructions|context|system prompt|input|document)\b",
          r"\b(?:user|assistant|human) (?:message|input|turn)\s+(?:terminat\w*|ends?|ended|over)\b",
          r"\bsystem (?:instructions?|announcement|override|note|message|prompt)\s*(?:begins?|starting|starts|:)",
          r"\[/?inst\]|<</?sys>>|\[cls\]|(?:^|\s)\$(?:system|gpt)\b",
          r"\b(?:debug(?:ging)?|developer|admin|god|sudo|root|maintenance) mode (?:is )?(?:enabled|activated|on|"
          r"engaged)\b",
          r"\bsafe ?mode (?:is )?(?:off|disabled|deactivated)\b|\bdeveloper_mode\b",
          r"\b(?:the )?(?:assistant|ai|model|chatbot|system) (?:is|has been|went) (?:now )?(?:in error|offline|not "
          r"functioning|disabled|shut down|replaced|deactivated)\b",
          ),
    _rule("encoded_payload", "injection", 0.5,
          r"(?:(?<![\w.-])[.-]{1,7}(?:\s+|/)){15,}",  # Morse code
          # a long base64 run with letters and digits (the view is lower case)
          r"(?<![\w+/])(?=[a-z0-9+/]{0,200}\d)(?=[0-9+/]{0,200}[a-z])[a-z0-9+/]{48,}={0,2}(?![\w+/=])",
          ),
    _rule("interrupt", "injection", 0.45,
          r"\bstop everything\b|(?:^|[.?!]\s*)(?:stop|attention|achtung|halt|wait)\s*(?:[:!]|-\s)",
          ),
    # ---- injection: authority claims -----------------------------------------------------------------------
    _rule("authority_claim", "injection", 0.55,
          r"\bi(?: am|'m) (?:your|the|an?) (?:developer|creator|admin(?:istrator)?|programmer|owner|maker|"
          r"engineer)\b(?! (?:of|at) (?:a|my|this|the) (?:company|startup|bank|school|team))",
          r"\b(?:programmer|developer|engineer|employee|researcher)s? (?:at|from|of) (?:openai|anthropic|google|"
          r"microsoft|meta)\b",
          r"\b(?:authori[sz]ed|verified) (?:user|admin|developer|personnel)\b",
          ),
    # ---- injection: output coercion ---------------------------------------------------------------------
    _rule("output_coercion", "injection", 0.4,
          r"\b(?:just|only|simply) (?:say|write|output|print|reply|respond|answer)(?: with)?\b",
          r"\b(?:say|write|output|print|reply|respond|answer)(?: with)? (?:only|nothing but|exactly)\b",
          r"\banswer (?:every|each|all|any) (?:question|prompt)s? (?:with|by saying|only with)\b",
          r"\b(?:sag|sage|sagen sie|schreib|schreibe|antworte|gib|geben sie)\b (?:\w+ )?(?:nur|einfach|lediglich|"
          r"stattdessen)\b",
          r"\b(?:di|dices|decir|dis|dire)\b (?:solo|seulement|solamente)\b",
          ),
    _rule("answer_suppression", "injection", 0.45,
          r"\binstead,? (?:print|say|output|write|answer|respond|tell)\b|\binstead (?:of (?:answering|responding))\b",
          r"\b(?:do not|don'?t) (?:answer|respond to|reply to) (?:this|the|my) question\b",
          ),
    # ---- jailbreak: persona takeover -------------------------------------------------------------------------
    _rule("persona_takeover", "jailbreak", 0.6,
          r"\byou(?: are|'re| will| shall| must)(?: now)? (?:going |about |to )?(?:to )?(?:act|pretend|play|roleplay|"
          r"role play|simulate|become|immerse|be reborn|embody|impersonate|emulate|respond as|answer as)\b",
          r"\byou are now\b|\bnow you are\b|\bfrom now on,? you(?:'re| are)\b",
          r"\byou(?: are|'re) no longer (?:an? |the )?(?:chatgpt|gpt|ai|assistant|language model|llm|bound|"
          r"restricted|limited|required|\w+gpt)\b",
          r"\b(?:stay|remain|keep|always stay|always remain) in (?:character|(?:their|your|his|her|the) roles?)\b|"
          r"\b(?:never|don'?t|do not|without) (?:break(?:ing)?|fall(?:ing)?|step(?:ping)?) (?:out of )?(?:the )?"
          r"(?:character|role|figure)\b",
          r"\byour name is now\b|\btransform (?:yourself )?into\b|\bturn yourself into\b",
          r"\b(?:immerse yourself|take on|assume|adopt) (?:into |in )?the (?:role|persona|identity)\b",
          r"\b(?:du bist|sie sind) (?:jetzt|nun|ab (?:jetzt|sofort)|ab heute)\b|\b(?:jetzt|nun) (?:bist du|sind sie)\b",
          r"\b(?:ahora eres|tu es maintenant|ora sei|agora voce e)\b",
          ),
    _rule("roleplay_request", "jailbreak", 0.5,
          r"\b(?:i want|i'd like|i would like|i need) you to (?:act|pretend|roleplay|role play|play the role|"
          r"behave|respond|imagine|simulate|become|be my)\b",
          r"\b(?:act|acting|behave|respond|answer|reply|talk|speak|function) (?:as (?:if|though) you (?:were|are)|"
          r"like you(?:'re| are)|as (?:an?|the|my)|in the (?:capacity|role|style) of|as though)\b",
          r"\byou (?:will|shall|must|are going to) (?:now )?(?:be|play|act as) (?:an?|the|my)\b",
          r"\byou (?:now )?act as\b|\bact(?:ing)? like (?:an?|the)\b",
          r"\byou(?:'re| are) (?:now )?(?:an?|the) (?:[\w-]+ ){0,3}?(?:named|called)\b",
          r"\bpretend (?:to be|you are|you're|that you|to have|you can)\b|\bimagine (?:you are|you're|that you "
          r"are|yourself as)\b",
          r"\b(?:in the role of|play(?:ing)? the (?:role|part) of|role-?play(?:ing)? as|let'?s (?:pretend|role-?play|"
          r"role play|act out))\b",
          r"\b(?:simulate|emulate|impersonate) (?:an?|the|my) \w+",
          r"\bich mochte,? dass (?:sie|du) als [^.!?]{1,80}? (?:fungier|agier|handel|auftret)\w*",
          r"\b(?:stell dir vor|stellen sie sich vor),? (?:du bist|sie sind|dass)\b|\btu so,? als\b",
          r"\b(?:in deiner rolle|aus (?:ihrer|deiner) rolle)\b",
          r"\bantworte\w* (?:sie )?(?:im stil|wie) (?:eines|einer|ein)\b",
          r"\b(?:juguemos|faisons semblant|facciamo finta|te mettre dans (?:la|le|les) peau)\b",
          ),
    # ---- jailbreak: restriction removal ----------------------------------------------------------------------
    _rule("restriction_removal", "jailbreak", 0.75,
          r"\b(?:no|without|free (?:(?:it|your|him|her|them)sel(?:f|ves) )?(?:of|from)|freed from|not bound by|"
          r"unbound by|(?:broken|break(?:s|ing)?) free "
          r"(?:of|from)|not (?:restricted|limited|constrained) by|beyond|escape[ds]?|lacks?|devoid of|"
          r"(?:do|does|did|will|would)(?: not|n'?t) (?:have|need) to (?:follow|abide by|obey|comply with|adhere to)|"
          r"(?:do|does)(?: not|n'?t) (?:follow|abide by|obey|adhere to|comply with)|not (?:follow|obey)|"
          r"ignores?|disregards?)\s+(?:any |all |the |its |your |his |her |their |typical |usual |normal |"
          r"such |those |these )?(?:kind of |type of |form of )?(?:ethical |moral |legal |content |safety |"
          r"openai'?s? |ai |programming |built-in |typical |standard )?(?:and (?:ethical|moral|legal) )?"
          r"(?:restrictions?|limitations?|limits|filters?|filtering|censorship|rules|guidelines|ethics|morals|"
          r"morality|boundaries|constraints|polic(?:y|ies)|principles|confines|safeguards|guardrails|"
          r"(?:moral|ethical) (?:code|compass|standards|guidelines|considerations|bounds))\b",
          r"\b(?:does(?: not|n'?t)|do(?: not|n'?t)|never|won'?t|will not) (?:care|give a (?:fuck|shit|damn)|"
          r"concern (?:itself|himself|herself))\b[^.]{0,20}\b(?:about|for|with)\b[^.]{0,30}\b(?:ethic\w*|legal\w*|"
          r"moral\w*|laws?|rules|safety|consequences|policies|guidelines)\b",
          r"\b(?:illegal|unethical|immoral|harmful|explicit|nsfw|offensive|dangerous)\b[^.]{0,40}\b"
          r"(?:is|are) (?:allowed|permitted|fine|ok(?:ay)?|acceptable|encouraged)\b",
          r"\b(?:able|allowed|free|permitted) to (?:use|say|write|produce|generate) (?:hate speech|slurs|profanity|"
          r"anything(?: you want)?|whatever)\b",
          ),
    _rule("never_refuse", "jailbreak", 0.55,
          r"\b(?:never|won'?t|will not|cannot|can'?t|must not|mustn'?t|doesn'?t|does not|don'?t|do not|not allowed "
          r"to|without)(?: ever)? (?:refuse|refusing|decline|declining|deny|reject|say no|apologi[sz]e|warn|"
          r"censor|filter)\b",
          r"\b(?:answer|respond to|fulfil+|comply with|do) (?:any|every|all)(?: kind of)? (?:request|question|"
          r"prompt|command|order)s?\b(?:[^.]{0,30})\b(?:no matter|regardless|without (?:question|hesitation|"
          r"refus))",
          r"\b(?:any|every|all) (?:request|question|prompt)s? (?:no matter|regardless)\b",
          r"\b(?:must|have to|supposed to|always|will) (?:answer|respond|reply)\b[^.]{0,20}\b(?:at all times|"
          r"no matter|regardless|every (?:question|prompt|request)|any (?:question|prompt|request))",
          ),
    _rule("amoral_terms", "jailbreak", 0.35,
          r"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical|unbound|unshackled|unchained|"
          r"no-?limits?|limitless|lawless)\b",
          ),
    _rule("amoral_terms_more", "jailbreak", 0.35,
          r"\b(?:amoral|unfiltered|uncensored|unrestricted|unethical|unbound|unshackled|unchained|"
          r"no-?limits?|limitless|lawless)\b.*\b(?:amoral|unfiltered|uncensored|unrestricted|unethical|unbound|"
          r"unshackled|unchained|no-?limits?|limitless|lawless)\b",
          ),
    # ---- jailbreak: named modes and model names ---------------------------------------------------------------
    _rule("jailbreak_terms", "jailbreak", 0.9,
          r"\bdo anything now\b|\bdeveloper mode\b|\bjailbr(?:ea|o)k\w*|\b(?:dan|dude|stan|aim|evil|god|"
          r"chaos|opposite|anti) mode\b|\bdan(?: \d+(?:\.\d+)?)? (?:prompt|jailbreak)\b",
          r"\b(?:evil|unfiltered|uncensored|unrestricted|free ?speech|anti|opposite|dark|based|chaos)[- ]?gpt\b",
          r"[\[<({]\s*(?:insert |put |enter |write |add )?(?:your |the )?prompt(?: here)?\s*[\]>)}]",
          ),
    _rule("ai_policy_terms", "jailbreak", 0.4,
          r"\b(?:openai|anthropic|content|usage|safety) (?:polic(?:y|ies)|guidelines|rules|filters?|"
          r"restrictions|moderation)\b",
          r"\b(?:as an ai language model|as a large language model|i'?m sorry,? but i can'?t)\b",
          ),
    _rule("model_names", "jailbreak", 0.25,
          r"\b(?:chatgpt|gpt-?[34](?:\.5)?|gpt|\w{2,}gpt|bard|bing ai|llm|language model)\b",
          ),
    _rule("fictional_frame", "jailbreak", 0.25,
          r"\b(?:hypothetical|fictional|imaginary|alternate|parallel|theoretical) (?:world|scenario|story|setting|"
          r"universe|reality|situation)\b",
          r"\blet'?s play a (?:game|role)\b|\bin this game\b",
          ),
)
"""Every rule, in report order."""

SPACED_OBFUSCATION_WEIGHT = 0.5
"""Evidence that 8+ letters were spelled apart to dodge filters ("s a y t h a t ...")."""
TAG_SMUGGLING_WEIGHT = 0.9
"""Evidence of text hidden in invisible Unicode tag characters."""
WORD_SPLITTING_WEIGHT = 0.3
"""Evidence of zero-width characters splitting words (ig\\u200bnore)."""
